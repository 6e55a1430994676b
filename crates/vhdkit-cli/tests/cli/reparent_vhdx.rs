//! `vhdkit reparent` and `vhdkit repair` on VHDX children through the real binary: dry run,
//! JSON, apply and re-verify, every refusal (exit 1, one line, child bytes and mtime
//! unchanged), a dirty log, and a process kill at every write and flush (strace fault
//! injection).

use std::path::Path;

use uuid::Uuid;
use vhdkit_testkit::lab::Lab;
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
use vhdkit_testkit::{kill, Rng};

use crate::util::*;

const SIZE: u64 = 8 << 20;
const PARENT_DWG: u128 = 0xaaaa_0000_0000_4000_8000_0000_0000_0001;
const CHILD_DWG: u128 = 0xcccc_0000_0000_4000_8000_0000_0000_0002;
/// The child's `parent_linkage2`: non-zero (a zero one is dropped when read) and matching no
/// parent, so every refusal also proves the alternate linkage is not accepted blindly.
const STALE_LINKAGE2: u128 = 0x2222_0000_0000_4000_8000_0000_0000_0003;

fn parent_builder(size: u64, lss: u32, dwg: u128) -> VhdxBuilder {
    let mut p = VhdxBuilder::new(Kind::Dynamic, size, 1 << 20, lss);
    p.data_write_guid = Uuid::from_u128(dwg);
    let mut rng = Rng::new(7);
    for _ in 0..20 {
        let s = rng.below(size / u64::from(lss) - 4);
        let mut d = vec![0u8; lss as usize * 2];
        rng.fill(&mut d);
        p.write(s * u64::from(lss), &d);
    }
    p
}

fn child_builder() -> VhdxBuilder {
    let mut c = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    c.data_write_guid = Uuid::from_u128(CHILD_DWG);
    c.parent_linkage = Uuid::from_u128(PARENT_DWG);
    c.parent_linkage2 = Some(Uuid::from_u128(STALE_LINKAGE2));
    c.absolute_win32_path = Some(r"C:\Lab\old\base.vhdx".into());
    c.relative_path = Some(r"..\old\base.vhdx".into());
    c.volume_path =
        Some(r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\Lab\old\base.vhdx".into());
    let mut rng = Rng::new(8);
    for s in [1u64, 3, 6, 100, 2049] {
        let mut d = vec![0u8; 512];
        rng.fill(&mut d);
        c.write(s * 512, &d);
    }
    let mut d = vec![0u8; 1 << 20];
    rng.fill(&mut d);
    c.write(3 << 20, &d);
    c
}

fn lab() -> Lab {
    Lab::new(
        "old/base.vhdx",
        parent_builder(SIZE, 512, PARENT_DWG).build().bytes,
        "vm/child.avhdx",
        &child_builder().build().bytes,
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (relative_path, DataWriteGuid, LogGuid) from `vhdkit info --json`.
fn facts(child: &Path) -> (Option<String>, String, String) {
    let j = run_success(["info", "--json", s(child)]).json();
    let rel = j["parent"]["locators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "relative_path")
        .and_then(|l| l["path"].as_str().map(str::to_string));
    (
        rel,
        j["data_write_guid"].as_str().unwrap().to_string(),
        j["log_guid"].as_str().unwrap().to_string(),
    )
}

#[test]
fn vhdx_dry_run_json_apply_and_chain() {
    let lab = lab();
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let before = std::fs::read(&lab.child).unwrap();
    let sha = virtual_sha(&lab.child);

    let r = run_success(["reparent", s(&lab.child), "--parent", s(&np), "--dry-run"]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    assert!(r.stdout.contains("(vhdx)"), "{r:?}");
    assert!(
        r.stdout.contains(r"relative path: ..\RefDisk\base.vhdx"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("vhdx parent locator / volume_path"),
        "{r:?}"
    );
    assert!(r.stdout.contains("-> (removed)"), "{r:?}");
    assert!(r.stdout.contains("through the log"), "{r:?}");
    assert!(!r.stdout.contains("parent name:"), "{r:?}");
    assert!(r.stderr.contains("POSIX"), "{r:?}");
    let j = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&np),
        "--dry-run",
        "--json",
    ])
    .json();
    assert_eq!(j["applied"], false);
    assert_eq!(j["plan"]["format"], "vhdx");
    assert_eq!(j["plan"]["identity"]["verdict"], "primary");
    assert_eq!(j["plan"]["relative_path"], r"..\RefDisk\base.vhdx");
    assert_eq!(j["plan"]["vhdx"]["sequence_number"], 2);
    assert_eq!(j["plan"]["vhdx"]["log_dirty"], false);
    assert!(j["plan"]["bytes_written"].as_u64().unwrap() <= 64 << 10);
    assert_eq!(std::fs::read(&lab.child).unwrap(), before, "dry run wrote");

    let r = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&np),
        "--windows-path",
        r"\\filer\lab\RefDisk\base.vhdx",
    ]);
    assert!(
        r.stdout
            .contains("chain re-opened: intact, 2 disks; parent found via relative_path"),
        "{r:?}"
    );
    assert!(r.stdout.contains("applied through the VHDX log"), "{r:?}");
    std::fs::remove_file(&lab.old_parent).unwrap();
    let r = run_success(["chain", s(&lab.child)]);
    assert!(r.stdout.contains("intact"), "{r:?}");
    assert!(r.stdout.contains("found via relative_path"), "{r:?}");
    assert_eq!(virtual_sha(&lab.child), sha);
    let (rel, dwg, log) = facts(&lab.child);
    assert_eq!(rel.as_deref(), Some(r"..\RefDisk\base.vhdx"));
    assert_eq!(dwg, Uuid::from_u128(CHILD_DWG).to_string());
    assert_eq!(log, Uuid::nil().to_string());
    // JSON apply output carries the report and the chain.
    let np2 = lab.copy_parent("vm/sub/base.vhdx");
    let j = run_success(["reparent", "--json", s(&lab.child), "--parent", s(&np2)]).json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["chain"]["intact"], true);
    assert_eq!(j["plan"]["relative_path"], r".\sub\base.vhdx");
    assert_eq!(j["report"]["bytes_written"], j["plan"]["bytes_written"]);
    assert!(j["report"]["vhdx"]["header_bytes"].as_u64().unwrap() > 0);
    assert_eq!(virtual_sha(&lab.child), sha);
}

fn assert_refusal(lab: &Lab, args: &[&str], needle: &str) {
    // Everything in the lab: the child, its journal (or its absence), every parent.
    let mut a = vec!["reparent", s(&lab.child)];
    a.extend_from_slice(args);
    assert_refused_in(lab.dir.path(), &a, needle);
}

#[test]
fn vhdx_every_refusal_exits_1_and_touches_nothing() {
    let lab = lab();
    // Another format.
    let vhd = lab.path("other/base.vhd");
    std::fs::create_dir_all(vhd.parent().unwrap()).unwrap();
    vhdkit_testkit::vhd::VhdBuilder::dynamic(SIZE)
        .build()
        .write_to(&vhd);
    assert_refusal(
        &lab,
        &["--parent", s(&vhd)],
        "a vhdx child needs a vhdx parent",
    );
    // Identity mismatch; --verify-content with different contents.
    let other = lab.write(
        "other/base.vhdx",
        &parent_builder(SIZE, 512, 0xdead).build().bytes,
    );
    assert_refusal(&lab, &["--parent", s(&other)], "identity mismatch");
    let mut diff = parent_builder(SIZE, 512, 0xbeef);
    diff.write(0, &[1; 512]);
    let diff = lab.write("diff/base.vhdx", &diff.build().bytes);
    assert_refusal(
        &lab,
        &["--parent", s(&diff), "--verify-content", s(&lab.old_parent)],
        "contents differ from the old parent's at virtual offset 0x",
    );
    // Size and sector size mismatches.
    let big = lab.write(
        "big/base.vhdx",
        &parent_builder(SIZE * 2, 512, PARENT_DWG).build().bytes,
    );
    assert_refusal(&lab, &["--parent", s(&big)], "virtual size mismatch");
    let s4k = lab.write(
        "s4k/base.vhdx",
        &parent_builder(SIZE, 4096, PARENT_DWG).build().bytes,
    );
    assert_refusal(&lab, &["--parent", s(&s4k)], "sector size mismatch");
    // The child itself; its own child.
    assert_refusal(&lab, &["--parent", s(&lab.child)], "the child itself");
    let mut gc = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    gc.data_write_guid = Uuid::from_u128(0x9999);
    gc.parent_linkage = Uuid::from_u128(CHILD_DWG);
    gc.relative_path = Some(r".\child.avhdx".into());
    let gc = lab.write("vm/gc.avhdx", &gc.build().bytes);
    assert_refusal(&lab, &["--parent", s(&gc)], "descendant of the child");
    // A new parent whose own chain is broken.
    let mut orphan = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    orphan.data_write_guid = Uuid::from_u128(PARENT_DWG);
    orphan.parent_linkage = Uuid::from_u128(0x4444);
    orphan.relative_path = Some(r".\gone.vhdx".into());
    let orphan = lab.write("orphan/base.vhdx", &orphan.build().bytes);
    assert_refusal(&lab, &["--parent", s(&orphan)], "own chain is broken");
    // A path longer than Windows allows.
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let long = format!(r"C:\{}.vhdx", "x".repeat(32_767));
    assert_refusal(
        &lab,
        &["--parent", s(&np), "--windows-path", &long],
        "longer than Windows allows",
    );
    // --ignore-id-mismatch accepts with a loud warning and rewrites parent_linkage.
    let r = run_success([
        "reparent",
        s(&lab.child),
        "--parent",
        s(&other),
        "--ignore-id-mismatch",
        "--dry-run",
    ]);
    assert!(r.stderr.contains("IDENTITY MISMATCH IGNORED"), "{r:?}");
    assert!(
        r.stdout.contains("vhdx parent locator / parent_linkage:"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("vhdx parent locator / parent_linkage2:"),
        "{r:?}"
    );
}

#[test]
fn vhdx_repair_replays_a_dirty_log() {
    let lab = lab();
    let sha_clean = virtual_sha(&lab.child);
    let mut built = child_builder().build();
    let bat = built.layout.bat_offset;
    built.make_dirty(&[bat], &[], &Default::default());
    std::fs::write(&lab.child, &built.bytes).unwrap();
    assert_eq!(
        virtual_sha(&lab.child),
        sha_clean,
        "read-only opens replay in memory"
    );
    let r = run_success(["repair", "--dry-run", s(&lab.child)]);
    assert!(
        r.stdout.contains("would replay it to the file (1 entries"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&lab.child).unwrap(), built.bytes);
    let j = run_success(["repair", "--json", "--dry-run", s(&lab.child)]).json();
    assert_eq!(j["vhdx_log"]["state"], "would_replay");
    let r = run_success(["repair", s(&lab.child)]);
    assert!(r.stdout.contains("vhdx log: replayed to the file"), "{r:?}");
    let (_, dwg, log) = facts(&lab.child);
    assert_eq!(log, Uuid::nil().to_string());
    assert_eq!(dwg, Uuid::from_u128(CHILD_DWG).to_string());
    assert_eq!(virtual_sha(&lab.child), sha_clean);
    let r = run_success(["repair", s(&lab.child)]);
    assert!(r.stdout.contains("vhdx log: clean"), "{r:?}");
}

const TRACED: &str = "write,pwrite64,fsync,fdatasync,ftruncate";

/// Kill the process at every write, flush and resize in turn; after each kill the chain reads
/// the same (replaying the log in memory) with the old or the new relative path, `repair`
/// replays the log to the file, and the result keeps the same locator and the DataWriteGuid.
#[test]
fn vhdx_process_kill_at_every_syscall() {
    if !have_tool("strace", "process-kill crash test") {
        return;
    }
    let lab = lab();
    let np = lab.copy_parent("RefDisk/base.vhdx");
    let old = std::fs::read(&lab.child).unwrap();
    let sha = virtual_sha(&lab.child);
    let (old_rel, dwg, _) = facts(&lab.child);
    let new_rel = Some(r"..\RefDisk\base.vhdx".to_string());
    let counted = lab.path("vm/counted.avhdx");
    std::fs::write(&counted, &old).unwrap();
    let counts = kill::count_syscalls(
        Path::new(env!("CARGO_BIN_EXE_vhdkit")),
        &["reparent", s(&counted), "--parent", s(&np)],
        TRACED,
        &lab.path("strace.log"),
    );
    eprintln!("syscalls of one vhdx reparent: {counts:?}");
    assert!(
        counts.get("pwrite64").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
    assert!(counts.get("fsync").copied().unwrap_or(0) >= 5, "{counts:?}");
    let (mut runs, mut saw_old, mut saw_new) = (0, 0, 0);
    let bin = Path::new(env!("CARGO_BIN_EXE_vhdkit"));
    let args = ["reparent", s(&lab.child), "--parent", s(&np)];
    for (name, &n) in &counts {
        for k in 1..=n {
            std::fs::write(&lab.child, &old).unwrap();
            kill::run_killed_at(bin, &args, name, k);
            runs += 1;
            let r = run(["chain", s(&lab.child)]);
            assert_eq!(r.code, 0, "{name}#{k}: {r:?}");
            assert_eq!(virtual_sha(&lab.child), sha, "{name}#{k}");
            let (rel, d, _) = facts(&lab.child);
            assert_eq!(d, dwg, "{name}#{k}: DataWriteGuid");
            let r = run(["repair", s(&lab.child)]);
            assert_eq!(r.code, 0, "{name}#{k}: {r:?}");
            let (rel2, d2, log2) = facts(&lab.child);
            assert_eq!(rel2, rel, "{name}#{k}: repair changed the locator");
            assert_eq!(d2, dwg);
            assert_eq!(log2, Uuid::nil().to_string(), "{name}#{k}");
            if rel == old_rel {
                saw_old += 1;
            } else if rel == new_rel {
                saw_new += 1;
            } else {
                panic!("{name}#{k}: relative_path {rel:?}");
            }
            assert_eq!(virtual_sha(&lab.child), sha, "{name}#{k}");
        }
        std::fs::write(&lab.child, &old).unwrap();
        kill::run_past_last(bin, &args, name, n);
        let (rel, d, log) = facts(&lab.child);
        assert_eq!(rel, new_rel, "{name}: past the last point");
        assert_eq!((d, log), (dwg.clone(), Uuid::nil().to_string()), "{name}");
    }
    eprintln!("vhdx process kills: {runs} runs, {saw_old} ended old, {saw_new} ended new");
    assert!(saw_old > 0 && saw_new > 0, "{saw_old} old, {saw_new} new");
}
