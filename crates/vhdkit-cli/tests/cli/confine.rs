//! `--confine DIR`: with a hostile child whose locators lead outside (a good parent copy in
//! another folder, `/etc/shadow`, `..\..\..\etc\shadow`, a link), no command that resolves
//! parents opens anything outside DIR; verified with `strace -e trace=openat`.

use std::path::{Path, PathBuf};

use crate::util::*;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

const PARENT_ID: [u8; 16] = *b"confined-parent!";
const SIZE: u64 = 4 << 20;

struct Tree {
    _d: tempfile::TempDir,
    inside: PathBuf,
    outside: PathBuf,
    child: PathBuf,
}

fn tree() -> Tree {
    let d = tmp();
    let inside = d.path().join("inside");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(inside.join("vm")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    VhdBuilder::dynamic(SIZE)
        .unique_id(PARENT_ID)
        .build()
        .write_to(&outside.join("base.vhd"));
    std::os::unix::fs::symlink(outside.join("base.vhd"), inside.join("vm/link.vhd")).unwrap();
    let child = inside.join("vm/child.vhd");
    VhdBuilder::differencing(SIZE, PARENT_ID)
        .parent_name("base.vhd")
        .locator(Locator::w2ru("..\\..\\outside\\base.vhd"))
        .locator(Locator::w2ku("/etc/shadow"))
        .locator(Locator::wi2r(&format!("{}etc\\shadow", "..\\".repeat(40))))
        .locator(Locator::wi2k(
            &outside.join("base.vhd").display().to_string(),
        ))
        .locator(Locator::macx("file:///etc/passwd"))
        .build()
        .write_to(&child);
    Tree {
        _d: d,
        inside,
        outside,
        child,
    }
}

/// Run vhdkit under strace; the exit code and every path it tried to open.
fn traced(args: &[&std::ffi::OsStr], log: &Path) -> (Run, Vec<String>) {
    let r: Run = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
        .arg(log)
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .output()
        .expect("spawn strace")
        .into();
    let opened = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect();
    (r, opened)
}

fn outside_opens(t: &Tree, opened: &[String]) -> Vec<String> {
    let out = t.outside.display().to_string();
    opened
        .iter()
        .filter(|p| p.starts_with(&out) || p.contains("/etc/shadow") || p.contains("/etc/passwd"))
        .cloned()
        .collect()
}

#[test]
fn nothing_outside_is_opened_by_any_command() {
    if !need_tool("strace", "confinement is proved on the openat calls") {
        return;
    }
    let t = tree();
    let log = t._d.path().join("strace.log");
    // Control: unconfined, the locators do lead outside (so the test below can fail).
    let (r, opened) = traced(&["chain".as_ref(), t.child.as_os_str()], &log);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!outside_opens(&t, &opened).is_empty(), "{opened:?}");

    let inside = t.inside.as_os_str();
    let child = t.child.as_os_str();
    let out_raw = t.inside.join("out.raw");
    let new_child = t.inside.join("new.vhd");
    let shared = t.inside.join("shared");
    let cmds: Vec<Vec<&std::ffi::OsStr>> = vec![
        vec!["chain".as_ref(), child],
        vec!["check".as_ref(), "--chain".as_ref(), child],
        vec!["check".as_ref(), child],
        vec!["check".as_ref(), "--chain".as_ref(), inside],
        vec![
            "convert".as_ref(),
            "--to".as_ref(),
            "raw".as_ref(),
            child,
            out_raw.as_os_str(),
        ],
        vec![
            "create".as_ref(),
            new_child.as_os_str(),
            "--parent".as_ref(),
            child,
        ],
        vec!["repair".as_ref(), "--dry-run".as_ref(), child],
        vec!["relink".as_ref(), "--dry-run".as_ref(), inside],
        vec![
            "share".as_ref(),
            inside,
            "--into".as_ref(),
            shared.as_os_str(),
            "--dry-run".as_ref(),
        ],
    ];
    for mut args in cmds {
        args.push("--confine".as_ref());
        args.push(inside);
        let (r, opened) = traced(&args, &log);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        let bad = outside_opens(&t, &opened);
        assert!(
            bad.is_empty(),
            "{args:?} opened outside the confinement: {bad:?}"
        );
        if args[0] == "chain" {
            assert_eq!(r.code, 1, "{r:?}");
            assert!(r.stderr.contains("refused by confinement"), "{r:?}");
        }
    }
    assert!(!out_raw.exists() && !new_child.exists());
}

#[test]
fn reparent_resolves_the_new_parents_chain_inside_only() {
    if !need_tool("strace", "confinement is proved on the openat calls") {
        return;
    }
    let t = tree();
    let log = t._d.path().join("strace.log");
    // A good parent copy inside: reparent the hostile child onto it, confined.
    let np = t.inside.join("base.vhd");
    std::fs::copy(t.outside.join("base.vhd"), &np).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "reparent".as_ref(),
        t.child.as_os_str(),
        "--parent".as_ref(),
        np.as_os_str(),
        "--confine".as_ref(),
        t.inside.as_os_str(),
    ];
    let (r, opened) = traced(&args, &log);
    assert_eq!(r.code, 0, "{r:?}");
    let bad = outside_opens(&t, &opened);
    assert!(
        bad.is_empty(),
        "reparent opened outside the confinement: {bad:?}"
    );
    // Now the child resolves inside, confined.
    let r = run([
        "chain".as_ref(),
        "--confine".as_ref(),
        t.inside.as_os_str(),
        t.child.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn refusal_says_nothing_about_the_file_outside() {
    let t = tree();
    let r = run([
        "chain".as_ref(),
        "--confine".as_ref(),
        t.inside.as_os_str(),
        t.child.as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let line = r.stderr.lines().next().unwrap_or_default();
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(line.contains("refused by confinement"), "{r:?}");
    assert!(
        !line.contains("not a vhd") && !line.contains("bytes"),
        "{r:?}"
    );
    assert!(!line.contains("id mismatch"), "{r:?}");
}
