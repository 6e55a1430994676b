//! `--confine DIR` and what is read beside a confined parent: its journal and its file time
//! (for the parent time-stamp check). Both go through the confinement as the parent itself
//! does (opened beneath DIR, the time from the open descriptor): a journal name that is a link
//! to outside, or the parent's folder swapped for a link to outside just after the parent was
//! opened, leads to nothing being read there, and no warning depends on what is there.
//!
//! The swap is made deterministic with `strace`: the confined parent's `openat2` is held at its
//! exit (`inject=openat2:delay_exit=`), the test sees the process held there
//! (`/proc/PID/task/*/syscall`), swaps the folder, and lets it go on.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::util::*;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

const PARENT_ID: [u8; 16] = *b"confined-journal";
const SIZE: u64 = 4 << 20;
/// The child's record of its parent's time stamp (seconds since 2000-01-01).
const TS: u32 = 700_000_000;
const VHD_EPOCH: u64 = 946_684_800;
/// `openat2(2)`'s number (the same on every architecture).
const SYS_OPENAT2: &str = "437 ";

struct Tree {
    _d: tempfile::TempDir,
    inside: PathBuf,
    outside: PathBuf,
    child: PathBuf,
}

/// `inside/vm/child.vhd` over `inside/p/base.vhd` (a relative locator); the parent's file time
/// is the time stamp the child records, its creation stamp is not. `outside/p` holds the same
/// parent with another file time and a journal beside it.
fn tree() -> Tree {
    let d = tmp();
    let inside = d.path().join("inside");
    let outside = d.path().join("outside");
    for p in [inside.join("vm"), inside.join("p"), outside.join("p")] {
        std::fs::create_dir_all(p).unwrap();
    }
    let parent = VhdBuilder::dynamic(SIZE)
        .unique_id(PARENT_ID)
        .timestamp(1)
        .build();
    parent.write_to(&inside.join("p/base.vhd"));
    parent.write_to(&outside.join("p/base.vhd"));
    let recorded = SystemTime::UNIX_EPOCH + Duration::from_secs(VHD_EPOCH + u64::from(TS));
    std::fs::File::options()
        .write(true)
        .open(inside.join("p/base.vhd"))
        .unwrap()
        .set_modified(recorded)
        .unwrap();
    std::fs::write(
        outside.join("p/base.vhd.vhdkit-journal"),
        b"outside journal bytes",
    )
    .unwrap();
    let child = inside.join("vm/child.vhd");
    VhdBuilder::differencing(SIZE, PARENT_ID)
        .parent_timestamp(TS)
        .locator(Locator::w2ru(r"..\p\base.vhd"))
        .build()
        .write_to(&child);
    Tree {
        _d: d,
        inside,
        outside,
        child,
    }
}

/// Every warning of the chain report (links and parent resolutions), one string each.
fn warnings(j: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for l in j["links"].as_array().unwrap() {
        for w in l["warnings"].as_array().into_iter().flatten() {
            out.push(w.as_str().unwrap().to_string());
        }
        for w in l["parent"]["warnings"].as_array().into_iter().flatten() {
            out.push(w.as_str().unwrap().to_string());
        }
    }
    out
}

fn chain_confined(t: &Tree) -> Vec<&OsStr> {
    vec![
        "chain".as_ref(),
        "--json".as_ref(),
        t.child.as_os_str(),
        "--confine".as_ref(),
        t.inside.as_os_str(),
    ]
}

#[test]
fn a_journal_name_linked_outside_is_not_read() {
    let t = tree();
    // Control: as it is, the chain is intact and warns about nothing.
    let r = run(chain_confined(&t));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(warnings(&r.json()), Vec::<String>::new());
    std::os::unix::fs::symlink(
        t.outside.join("p/base.vhd.vhdkit-journal"),
        t.inside.join("p/base.vhd.vhdkit-journal"),
    )
    .unwrap();
    let r = run(chain_confined(&t));
    assert_eq!(r.code, 0, "{r:?}");
    let w = warnings(&r.json());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("symbolic link") && w[0].contains("not opened"),
        "{w:?}"
    );
    assert!(
        !w[0].contains("checksum"),
        "its contents were judged: {w:?}"
    );
}

/// The pid of a process whose parent is `ppid`.
fn child_of(ppid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let after = stat.get(stat.rfind(')')? + 1..)?;
        let parent: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (parent == ppid).then_some(pid)
    })
}

/// Whether a task of `pid` is stopped in `openat2`.
fn held_in_openat2(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("syscall")).is_ok_and(|s| s.starts_with(SYS_OPENAT2))
    })
}

/// Run `vhdkit ARGS` under strace with every `openat2` held for a second at its exit; when the
/// first is held (seen twice, so it is the exit stop and not the brief entry stop), run `swap`.
/// `None` when no hold was seen (no `openat2` on this kernel, no `/proc/PID/syscall`).
fn run_swapping_after_first_openat2(args: &[&OsStr], swap: impl FnOnce()) -> Option<Run> {
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=openat2"])
        .args(["-e", "inject=openat2:delay_exit=1000000"])
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut swap = Some(swap);
    while swap.is_some() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let held = child_of(child.id()).is_some_and(|pid| {
            held_in_openat2(pid) && {
                std::thread::sleep(Duration::from_millis(100));
                held_in_openat2(pid)
            }
        });
        if held {
            if let Some(f) = swap.take() {
                f();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out: Run = child.wait_with_output().unwrap().into();
    swap.is_none().then_some(out)
}

#[test]
fn a_parent_folder_swapped_for_a_link_outside_after_the_open_leaks_nothing() {
    if !need_tool("strace", "the swap is timed by holding openat2 with strace") {
        return;
    }
    if std::fs::read_to_string("/proc/self/syscall").is_err() {
        vhdkit_testkit::skip_or_fail("needs /proc/PID/syscall to see the held openat2");
        return;
    }
    let t = tree();
    let p = t.inside.join("p");
    let moved = t.inside.join("p.orig");
    let outside_p = t.outside.join("p");
    let swap = || {
        std::fs::rename(&p, &moved).unwrap();
        std::os::unix::fs::symlink(&outside_p, &p).unwrap();
    };
    let Some(r) = run_swapping_after_first_openat2(&chain_confined(&t), swap) else {
        vhdkit_testkit::skip_or_fail("openat2 was never held (no openat2 on this kernel?)");
        return;
    };
    // The parent was opened inside before the swap: the chain is intact.
    assert_eq!(r.code, 0, "{r:?}");
    let w = warnings(&r.json());
    // Its journal is looked for beneath the confining folder: the swapped folder leads out, so
    // nothing is opened there (read by path, the outside bytes would be judged: "checksum").
    assert!(
        w.iter()
            .any(|w| w.contains("leads outside the confining folder")),
        "the swap did not land between the parent's open and its journal's: {w:?}"
    );
    assert!(!w.iter().any(|w| w.contains("checksum")), "{w:?}");
    // The file time is the opened parent's (it matches the record): the outside file's time,
    // which does not, is never looked at.
    assert!(!w.iter().any(|w| w.contains("time stamp")), "{w:?}");
}
