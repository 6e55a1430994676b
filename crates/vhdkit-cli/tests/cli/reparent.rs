//! `vhdkit reparent` and `vhdkit repair` through the real binary: dry run, JSON, apply and
//! re-verify, every refusal (exit 1, one line, child bytes and mtime unchanged), VHDX children,
//! and a process kill at every write/flush/rename (strace fault injection).

use std::path::{Path, PathBuf};

use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::{kill, Rng};

use vhdkit_testkit::lab::{IdLab, Lab};
use vhdkit_testkit::snapshot::Snapshot;

use crate::util::*;

const SIZE: u64 = 8 << 20;

/// The lab and the VHD ids of its child and parent.
type VhdLab = IdLab;

fn lab() -> VhdLab {
    let mut rng = Rng::new(11);
    let mut parent = VhdBuilder::dynamic(SIZE).block_size(1 << 20);
    let mut child = VhdBuilder::differencing(SIZE, parent.id())
        .block_size(1 << 20)
        .parent_name(r"C:\Lab\old\base.vhd")
        .locator(Locator::w2ku(r"C:\Lab\old\base.vhd").data_space(4096))
        .locator(Locator::w2ru(r"..\old\base.vhd").data_space(1))
        .locator(Locator::wi2k(r"C:\Lab\old\base.vhd"));
    for (b, n) in [(&mut parent, 30), (&mut child, 12)] {
        for _ in 0..n {
            let s = rng.below(SIZE / 512 - 4);
            let mut d = vec![0u8; 512 * (1 + rng.below(3) as usize)];
            rng.fill(&mut d);
            b.write(s * 512, &d);
        }
    }
    // Sectors 1, 3 and 6 of block 0: bitmap byte 0x52.
    for s in [1u64, 3, 6] {
        child.write(s * 512, &[0xC5; 512]);
    }
    let lab = Lab::new(
        "old/base.vhd",
        parent.build().bytes,
        "vm/child.vhd",
        &child.build().bytes,
    );
    std::fs::create_dir_all(lab.path("RefDisk")).unwrap();
    VhdLab {
        lab,
        child_id: child.id(),
        parent_id: parent.id(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dry_run_json_apply_and_chain() {
    let lab = lab();
    let np = lab.copy_parent("RefDisk/base.vhd");
    let before = std::fs::read(&lab.child).unwrap();
    let sha = virtual_sha(&lab.child);

    let r = run_success(["reparent", s(&lab.child), "--parent", s(&np), "--dry-run"]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    assert!(
        r.stdout.contains(r"relative path: ..\RefDisk\base.vhd"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("parent locator 2"),
        "stale Wi2k cleared: {r:?}"
    );
    assert!(r.stdout.contains("-> (empty)"), "{r:?}");
    assert!(r.stderr.contains("POSIX"), "{r:?}");
    let r = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&np),
        "--dry-run",
        "--json",
    ]);
    let j = r.json();
    assert_eq!(j["applied"], false);
    assert_eq!(j["plan"]["identity"]["verdict"], "primary");
    assert_eq!(j["plan"]["relative_path"], r"..\RefDisk\base.vhd");
    assert_eq!(j["plan"]["absolute_path"]["source"], "local_posix");
    assert!(j["plan"]["txn"]["writes"].as_array().unwrap().len() >= 2);
    assert!(j["plan"]["bytes_written"].as_u64().unwrap() < 8192);
    assert_eq!(std::fs::read(&lab.child).unwrap(), before, "dry run wrote");

    let r = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&np),
        "--map",
        &format!(r"C:\Lab={}", lab.dir.path().display()),
    ]);
    assert!(
        r.stdout
            .contains("chain re-opened: intact, 2 disks; parent found via W2ru"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(r"absolute path: C:\Lab\RefDisk\base.vhd"),
        "{r:?}"
    );
    std::fs::remove_file(&lab.old_parent).unwrap();
    let r = run_success(["chain", s(&lab.child)]);
    assert!(r.stdout.contains("intact"), "{r:?}");
    assert!(r.stdout.contains("found via W2ru"), "{r:?}");
    assert_eq!(virtual_sha(&lab.child), sha);
    let info = run_success(["info", "--json", s(&lab.child)]).json();
    assert_eq!(
        info["id"].as_str().unwrap(),
        vhdkit::guid::from_vhd_bytes(lab.child_id).to_string()
    );
    assert_eq!(
        info["parent"]["id"].as_str().unwrap(),
        vhdkit::guid::from_vhd_bytes(lab.parent_id).to_string()
    );
    // JSON apply output carries the report and the chain.
    let np2 = lab.copy_parent("vm/sub/base.vhd");
    let j = run_success(["reparent", "--json", s(&lab.child), "--parent", s(&np2)]).json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["chain"]["intact"], true);
    assert_eq!(j["plan"]["relative_path"], r".\sub\base.vhd");
    assert!(j["report"]["bytes_written"].as_u64().unwrap() > 0);
    assert_eq!(virtual_sha(&lab.child), sha);
}

fn assert_refusal(lab: &Lab, args: &[&str], needle: &str) {
    // Everything in the lab: the child, its journal (or its absence), every parent.
    let mut a = vec!["reparent", s(&lab.child)];
    a.extend_from_slice(args);
    assert_refused_in(lab.dir.path(), &a, needle);
}

#[test]
fn every_refusal_exits_1_and_touches_nothing() {
    let lab = lab();
    // Wrong format: a raw file, and (when qemu-img is there) a VHDX.
    let junk = lab.path("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    assert_refusal(&lab, &["--parent", s(&junk)], "cannot be opened");
    if have_tool("qemu-img", "reparent onto a vhdx parent") {
        let x = lab.path("p.vhdx");
        qemu_create("vhdx", "subformat=dynamic", &x, "8M");
        let before = Snapshot::tree(lab.dir.path());
        let r = run(["reparent", s(&lab.child), "--parent", s(&x)]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("vhdx"), "{r:?}");
        before.assert_unchanged("vhdx parent");
    }
    // Identity mismatch without a flag.
    let other = lab.path("other/base.vhd");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let mut b = VhdBuilder::dynamic(SIZE).block_size(1 << 20);
    b.write(0, &[9u8; 512]);
    b.build().write_to(&other);
    assert_refusal(&lab, &["--parent", s(&other)], "identity mismatch");
    // --verify-content with different contents.
    assert_refusal(
        &lab,
        &[
            "--parent",
            s(&other),
            "--verify-content",
            s(&lab.old_parent),
        ],
        "contents differ from the old parent's at virtual offset 0x",
    );
    // Size mismatch.
    let small = lab.path("small.vhd");
    VhdBuilder::dynamic(SIZE * 2)
        .unique_id(lab.parent_id)
        .build()
        .write_to(&small);
    assert_refusal(&lab, &["--parent", s(&small)], "virtual size mismatch");
    // The child itself; a descendant.
    assert_refusal(&lab, &["--parent", s(&lab.child)], "the child itself");
    let gc = lab.path("vm/gc.vhd");
    VhdBuilder::differencing(SIZE, lab.child_id)
        .locator(Locator::w2ru(r".\child.vhd"))
        .build()
        .write_to(&gc);
    assert_refusal(&lab, &["--parent", s(&gc)], "descendant of the child");
    // The new parent's own chain is broken.
    let orphan = lab.path("orphan/base.vhd");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    VhdBuilder::differencing(SIZE, [3; 16])
        .unique_id(lab.parent_id)
        .locator(Locator::w2ru(r".\gone.vhd"))
        .build()
        .write_to(&orphan);
    assert_refusal(&lab, &["--parent", s(&orphan)], "own chain is broken");
    // A bad --windows-path.
    let np = lab.copy_parent("RefDisk/base.vhd");
    assert_refusal(
        &lab,
        &["--parent", s(&np), "--windows-path", "relative\\x.vhd"],
        "not an absolute Windows path",
    );
    // --ignore-id-mismatch accepts with a loud warning.
    let r = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&other),
        "--ignore-id-mismatch",
        "--dry-run",
    ]);
    assert!(r.stderr.contains("IDENTITY MISMATCH IGNORED"), "{r:?}");
    assert!(r.stdout.contains("parent unique id"), "{r:?}");
    // Refusals print JSON on --json too.
    let r = run(["reparent", "--json", s(&lab.child), "--parent", s(&other)]);
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["exit_code"], 1);
}

/// A VHDX that is not a differencing disk (made by qemu) is refused like a VHD one.
#[test]
fn vhdx_dynamic_is_refused() {
    if !have_tool("qemu-img", "vhdx child") {
        return;
    }
    let d = tmp();
    let x = p(d.path(), "c.vhdx");
    qemu_create("vhdx", "subformat=dynamic", &x, "8M");
    let before = Snapshot::tree(d.path());
    let r = run(["reparent", s(&x), "--parent", s(&x)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not a differencing disk"), "{r:?}");
    before.assert_unchanged("dynamic vhdx child");
}

#[test]
fn repair_reports_and_refuses_foreign_journals() {
    let lab = lab();
    let r = run_success(["repair", s(&lab.child)]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");
    let j = run_success(["repair", "--json", "--dry-run", s(&lab.child)]).json();
    assert_eq!(j["journal"]["state"], "none");
    let jp = PathBuf::from(format!("{}.vhdkit-journal", lab.child.display()));
    std::fs::write(&jp, b"garbage").unwrap();
    let before = Snapshot::tree(lab.dir.path());
    let r = run(["repair", s(&lab.child)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("NOT applied"), "{r:?}");
    before.assert_unchanged("repair with a foreign journal");
    // info still opens the file, with a warning, and reparent refuses.
    let r = run_success(["info", s(&lab.child)]);
    assert!(r.stdout.contains("ignored the vhdkit journal"), "{r:?}");
    let np = lab.copy_parent("RefDisk/base.vhd");
    assert_refusal(&lab, &["--parent", s(&np)], "does not match the file");
}

const TRACED: &str =
    "write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat";

/// Kill the process at every write, flush, resize, rename and unlink in turn; after each kill
/// the child reads the same, its chain is intact (old or new parent), `repair` finishes, and the
/// file is byte-identical to the untouched or the fully reparented file.
#[test]
fn process_kill_at_every_syscall() {
    kill_case("RefDisk/base.vhd");
}

/// The same with a relative path longer than its reserved space: the file grows (ftruncate),
/// the locator data is relocated and the footer moves.
#[test]
fn process_kill_at_every_syscall_with_relocation() {
    kill_case(&format!(
        "vm/{}/base.vhd",
        ["a-long-folder-name"; 20].join("/")
    ));
}

fn kill_case(np_rel: &str) {
    if !have_tool("strace", "process-kill crash test") {
        return;
    }
    let lab = lab();
    let np = lab.copy_parent(np_rel);
    let old = std::fs::read(&lab.child).unwrap();
    let sha = virtual_sha(&lab.child);
    // Reference: the same reparent on an identical copy in the same folder.
    let reference = lab.path("vm/reference.vhd");
    std::fs::write(&reference, &old).unwrap();
    run_success(["reparent", s(&reference), "--parent", s(&np)]);
    let new = std::fs::read(&reference).unwrap();
    assert_ne!(new, old);
    // Count the syscalls of one clean run.
    let counted = lab.path("vm/counted.vhd");
    std::fs::write(&counted, &old).unwrap();
    let counts = kill::count_syscalls(
        Path::new(env!("CARGO_BIN_EXE_vhdkit")),
        &["reparent", s(&counted), "--parent", s(&np)],
        TRACED,
        &lab.path("strace.log"),
    );
    eprintln!("syscalls of one reparent: {counts:?}");
    assert!(
        counts.get("pwrite64").copied().unwrap_or(0) >= 3,
        "{counts:?}"
    );
    assert!(counts.get("fsync").copied().unwrap_or(0) >= 2, "{counts:?}");
    let journal = PathBuf::from(format!("{}.vhdkit-journal", lab.child.display()));
    let mut runs = 0;
    let (mut saw_old, mut saw_new) = (0, 0);
    let bin = Path::new(env!("CARGO_BIN_EXE_vhdkit"));
    let args = ["reparent", s(&lab.child), "--parent", s(&np)];
    let fresh = || {
        std::fs::write(&lab.child, &old).unwrap();
        if journal.exists() {
            std::fs::remove_file(&journal).unwrap();
        }
    };
    for (name, &n) in &counts {
        for k in 1..=n {
            fresh();
            kill::run_killed_at(bin, &args, name, k);
            runs += 1;
            // Read-only commands see either linkage, intact, with the same contents.
            let r = run(["chain", s(&lab.child)]);
            assert_eq!(r.code, 0, "{name}#{k}: {r:?}");
            assert_eq!(virtual_sha(&lab.child), sha, "{name}#{k}");
            let r = run(["repair", s(&lab.child)]);
            assert_eq!(r.code, 0, "{name}#{k}: {r:?}");
            assert!(!journal.exists(), "{name}#{k}: journal left after repair");
            let got = std::fs::read(&lab.child).unwrap();
            if got == old {
                saw_old += 1;
            } else if got == new {
                saw_new += 1;
            } else {
                panic!("{name}#{k}: neither old nor new after repair");
            }
            assert_eq!(virtual_sha(&lab.child), sha, "{name}#{k}");
        }
        fresh();
        kill::run_past_last(bin, &args, name, n);
        assert_eq!(
            std::fs::read(&lab.child).unwrap(),
            new,
            "{name}: past the last point"
        );
        assert!(!journal.exists(), "{name}: journal left by a complete run");
    }
    eprintln!("process kills: {runs} runs, {saw_old} ended old, {saw_new} ended new");
    assert!(saw_old > 0 && saw_new > 0, "{saw_old} old, {saw_new} new");
}
