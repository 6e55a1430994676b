//! The command-line contract, exactly as the README documents it: usage errors (exit 1, one
//! line, JSON with `--json` anywhere), `--help`/`--version` (exit 0), `relink FILE` refused like
//! `share FILE`, summaries that agree with the lines above them, `share`'s freed bytes as `du`
//! counts them, the `--map` hint for skipped Windows paths, and the global `--quiet` and
//! `--no-progress` flags.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vhdkit_testkit::vhd::{Locator, VhdBuilder};

use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One line on stderr naming the problem, nothing else there.
fn assert_usage_error(r: &Run, needle: &str) {
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{r:?}");
    assert!(lines[0].starts_with("vhdkit: error: "), "{r:?}");
    assert!(lines[0].contains(needle), "{needle}: {r:?}");
}

const USAGE_ERRORS: &[(&[&str], &str)] = &[
    (&["info", "--frobnicate", "x.vhd"], "--frobnicate"),
    (&["frobnicate"], "frobnicate"),
    (&["info"], "<FILE>"),
    (&["share", "dir"], "--into"),
    (&["convert", "--to", "qcow2", "a", "b"], "qcow2"),
    (&["create", "x.vhd", "--logical-sector-size", "7"], "7"),
    (&["check"], "PATHS"),
    (&[], "no command"),
];

#[test]
fn usage_errors_exit_1_with_one_line() {
    for (args, needle) in USAGE_ERRORS {
        let r = run(*args);
        assert_usage_error(&r, needle);
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
}

#[test]
fn usage_errors_print_json_when_asked_anywhere() {
    for (args, needle) in USAGE_ERRORS {
        // Before the command `--json` is itself the usage error; the JSON still comes.
        for at in [0, args.len()] {
            let mut a: Vec<&str> = args.to_vec();
            a.insert(at, "--json");
            let r = run(&a);
            let needle = if at == 0 { "--json" } else { needle };
            assert_usage_error(&r, needle);
            let j = r.json();
            assert_eq!(j["exit_code"], 1, "{a:?}: {r:?}");
            assert!(
                j["error"].as_str().unwrap().contains(needle),
                "{a:?}: {r:?}"
            );
        }
    }
}

#[test]
fn help_and_version_succeed() {
    for a in [
        &["--help"][..],
        &["--version"],
        &["-V"],
        &["share", "--help"],
        &["help", "relink"],
    ] {
        let r = run(a);
        assert_eq!(r.code, 0, "{a:?}: {r:?}");
        assert!(!r.stdout.is_empty(), "{a:?}: {r:?}");
    }
}

#[test]
fn relink_and_share_refuse_a_file() {
    let t = tmp();
    let f = t.path().join("disk.vhd");
    VhdBuilder::dynamic(1 << 20).build().write_to(&f);
    let before = sha256_file(&f);
    for args in [
        vec!["relink", s(&f)],
        vec!["share", s(&f), "--into", s(t.path())],
        vec!["relink", s(&f), "--json"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains("is not a folder"), "{args:?}: {r:?}");
        if args.contains(&"--json") {
            assert_eq!(r.json()["exit_code"], 1);
        }
    }
    assert_eq!(sha256_file(&f), before);
}

/// A tree whose only disk is damaged: neither command may close with "nothing to do" alone.
#[test]
fn summaries_do_not_contradict_findings() {
    let t = tmp();
    let d = t.path().join("VMs");
    std::fs::create_dir_all(&d).unwrap();
    let mut junk = vec![0u8; 4096];
    junk[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
    std::fs::write(d.join("broken.vhd"), &junk).unwrap();
    let into = t.path().join("Shared");
    for args in [
        vec!["share", s(&d), "--into", s(&into)],
        vec!["share", s(&d), "--into", s(&into), "--delete-copies"],
        vec!["relink", s(&d)],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stdout.contains("SKIPPED"), "{r:?}");
        assert!(!r.stdout.contains("nothing to do:"), "{args:?}: {r:?}");
        assert!(r.stdout.contains("findings above"), "{args:?}: {r:?}");
    }
}

/// Two VMs with a sparse fixed reference disk (64 MiB long, a few KiB allocated) and a child
/// each.
fn sparse_lab(t: &Path) -> (PathBuf, PathBuf) {
    let vms = t.join("VMs");
    let base = t.join("base.vhd");
    run_success(["create", s(&base), "--size", "64M", "--fixed"]);
    for vm in ["VM1", "VM2"] {
        let d = vms.join(vm);
        std::fs::create_dir_all(&d).unwrap();
        let copy = d.join("ref.vhd");
        run_ok(std::process::Command::new("cp").args(["--sparse=always", s(&base), s(&copy)]));
        run_success(["create", s(&d.join("vm.vhd")), "--parent", s(&copy)]);
    }
    std::fs::remove_file(&base).unwrap();
    (vms, t.join("Shared"))
}

#[test]
fn share_frees_allocated_bytes_with_the_apparent_size_beside() {
    let t = tmp();
    let (vms, shared) = sparse_lab(t.path());
    let copy = vms.join("VM2/ref.vhd");
    let m = std::fs::metadata(&copy).unwrap();
    let (alloc, len) = (m.blocks() * 512, m.len());
    assert!(
        alloc < len / 4,
        "the copy is not sparse here ({alloc} of {len})"
    );
    let dry = run([
        "share",
        s(&vms),
        "--into",
        s(&shared),
        "--delete-copies",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json()["plan"]["bytes_freed"], alloc, "{dry:?}");
    assert_eq!(dry.json()["plan"]["bytes_freed_apparent"], len, "{dry:?}");
    let r = run(["share", s(&vms), "--into", s(&shared), "--delete-copies"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = r.stdout.lines().find(|l| l.starts_with("freed ")).unwrap();
    assert!(line.contains(&format!("({alloc} bytes) on disk")), "{line}");
    assert!(line.contains(&format!("({len} bytes) apparent")), "{line}");
    assert!(!copy.exists());
}

#[test]
fn skipped_windows_locator_is_shown_with_a_map_hint() {
    let t = tmp();
    let child = t.path().join("vm.vhd");
    VhdBuilder::differencing(1 << 20, [9; 16])
        .parent_name("base.vhd")
        .locator(Locator::w2ku(r"C:\Lab\Ref\base.vhd"))
        .build()
        .write_to(&child);
    for args in [
        vec!["chain", s(&child)],
        vec!["check", "--chain", s(&child)],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains(r"C:\Lab\Ref\base.vhd"), "{args:?}: {r:?}");
        assert!(all.contains("--map"), "{args:?}: {r:?}");
    }
    // With a map that covers it, the hint is gone (the mapped path is tried instead).
    let r = run(["chain", "--map", r"C:\Lab=/nonexistent", s(&child)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("/nonexistent/Ref/base.vhd"), "{r:?}");
    assert!(
        !r.stdout.contains("skipped: an absolute Windows path"),
        "{r:?}"
    );
}

#[test]
fn quiet_and_no_progress_work_on_every_long_running_command() {
    let t = tmp();
    let (vms, shared) = sparse_lab(t.path());
    let child = vms.join("VM1/vm.vhd");
    let raw = t.path().join("out.raw");
    let new = t.path().join("new.vhd");
    let cases: Vec<Vec<&str>> = vec![
        vec!["check", s(&vms)],
        vec!["convert", "--to", "raw", s(&child), s(&raw)],
        vec!["create", s(&new), "--size", "1M"],
        vec!["repair", s(&child)],
        vec!["chain", s(&child)],
        vec!["share", s(&vms), "--into", s(&shared), "--dry-run"],
        vec!["relink", s(&vms), "--dry-run"],
    ];
    for flag in ["--quiet", "-q", "--no-progress"] {
        for c in &cases {
            let _ = std::fs::remove_file(&raw);
            let _ = std::fs::remove_file(&new);
            // Both before the command and after it.
            for at in [0, 1] {
                let mut a = c.clone();
                a.insert(at, flag);
                let r = run(&a);
                assert_eq!(r.code, 0, "{a:?}: {r:?}");
                assert_eq!(r.stdout.is_empty(), flag != "--no-progress", "{a:?}: {r:?}");
                assert!(r.stderr.is_empty(), "{a:?}: {r:?}");
                let _ = std::fs::remove_file(&raw);
                let _ = std::fs::remove_file(&new);
            }
        }
    }
    // --quiet keeps JSON that was asked for, and errors.
    let r = run(["--quiet", "check", "--json", s(&vms)]);
    assert_eq!(r.json()["clean"], true, "{r:?}");
    let r = run(["--quiet", "info", s(&t.path().join("missing.vhd"))]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.starts_with("vhdkit: error: "), "{r:?}");
}
