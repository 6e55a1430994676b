//! One writer at a time, against real concurrent processes: a `reparent` slowed by strace (as
//! on a slow disk) holds the child's lock while it writes; any other writer (`reparent`,
//! `repair`, `share`, a `flock FILE sleep` holder) is refused with exit 1 and one line, and
//! every parent reference in the child (VHD `W2ku`, `W2ru`, parent name; VHDX locator entries)
//! comes from the one that won. A writer slowed just before its lock sees the change the other
//! made and refuses (its plan is stale), instead of mixing the two.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

#[cfg(target_arch = "x86_64")]
const FLOCK_NR: u32 = 73;
#[cfg(target_arch = "aarch64")]
const FLOCK_NR: u32 = 32;
/// Unknown here: the test that needs it skips.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const FLOCK_NR: u32 = u32::MAX;

struct Lab {
    _d: tempfile::TempDir,
    root: PathBuf,
    child: PathBuf,
    /// Two more identical copies of the parent, in other folders.
    p1: PathBuf,
    p2: PathBuf,
}

/// `a-ref/base.EXT` (the parent; first in name order, so `share` keeps it), its copies
/// `z1/base.EXT` and `z2/base.EXT`, and `vm/child.EXT` over `a-ref/base.EXT`.
fn lab(ext: &str) -> Lab {
    let d = tmp();
    let root = d.path().join("lab");
    for sub in ["a-ref", "z1", "z2", "vm"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let base = root.join(format!("a-ref/base.{ext}"));
    let child = root.join(format!("vm/child.{ext}"));
    create_pair(&base, &child, "8M");
    let p1 = root.join(format!("z1/base.{ext}"));
    let p2 = root.join(format!("z2/base.{ext}"));
    std::fs::copy(&base, &p1).unwrap();
    std::fs::copy(&base, &p2).unwrap();
    Lab {
        _d: d,
        root,
        child,
        p1,
        p2,
    }
}

fn tools() -> bool {
    need_tool(
        "strace",
        "concurrent writers are slowed with strace -e inject",
    )
}

/// `vhdkit ARGS` under strace, every `syscall` delayed by `delay_us` on entry.
fn slowed(syscall: &str, delay_us: u64, args: &[&std::ffi::OsStr]) -> Child {
    Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:delay_enter={delay_us}"))
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace")
}

fn finish(c: Child) -> Run {
    c.wait_with_output().expect("wait").into()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when some process holds a `flock` write lock on `p` (read from /proc/locks, which
/// takes no lock itself and so cannot disturb the race).
fn flocked(p: &Path) -> bool {
    let ino = std::fs::metadata(p).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"FLOCK")
                && f.get(3) == Some(&"WRITE")
                && f.get(5).and_then(|d| d.rsplit(':').next()) == Some(&ino.to_string())
        })
}

/// True when the process strace started is stopped entering syscall `nr`.
fn in_syscall(tracer: &Child, nr: u32) -> bool {
    let pid = tracer.id();
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace().any(|k| {
        std::fs::read_to_string(format!("/proc/{k}/syscall"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            == Some(&nr.to_string())
    })
}

fn reparent_args<'a>(child: &'a Path, parent: &'a Path) -> Vec<&'a std::ffi::OsStr> {
    vec![
        "reparent".as_ref(),
        child.as_os_str(),
        "--parent".as_ref(),
        parent.as_os_str(),
    ]
}

/// Every parent path the child records (locators, and the VHD parent name), as text.
fn parent_refs(child: &Path) -> Vec<String> {
    let info = run_success(["info".as_ref(), "--json".as_ref(), child.as_os_str()]).json();
    let mut out: Vec<String> = info["parent"]["locators"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_string))
        .collect();
    if let Some(n) = info["dynamic"]["parent_unicode_name"].as_str() {
        out.push(n.to_string());
    }
    out
}

/// The child records `winner` in every reference (and `loser` in none), and checks clean.
fn assert_all_from(child: &Path, winner: &Path, loser: &Path) {
    let refs = parent_refs(child);
    assert!(refs.len() >= 2, "{refs:?}");
    let dir = |p: &Path| {
        p.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for r in &refs {
        assert!(
            r.contains(&dir(winner)),
            "{r} is not from the winner {}: {refs:?}",
            winner.display()
        );
        assert!(!r.contains(&dir(loser)), "{r} is from the loser: {refs:?}");
    }
    let c = run(["check".as_ref(), "--chain".as_ref(), child.as_os_str()]);
    assert_eq!(c.code, 0, "{c:?}");
}

fn assert_refused_in_use(r: &Run, what: &str) {
    assert_eq!(r.code, 1, "{what}: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{what}: {r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("in use by another process"), "{what}: {r:?}");
}

#[test]
fn two_reparents_one_slowed_in_its_writes() {
    if !tools() {
        return;
    }
    for ext in ["vhd", "vhdx"] {
        let l = lab(ext);
        let a = slowed("pwrite64", 300_000, &reparent_args(&l.child, &l.p1));
        wait_for("the slowed reparent takes its lock", || flocked(&l.child));
        let b = run(reparent_args(&l.child, &l.p2));
        assert_refused_in_use(&b, ext);
        assert_eq!(
            b.stderr.lines().filter(|x| x.contains("error")).count(),
            1,
            "{b:?}"
        );
        let a = finish(a);
        assert_eq!(a.code, 0, "{ext}: the slowed reparent: {a:?}");
        assert_all_from(&l.child, &l.p1, &l.p2);
    }
}

#[test]
fn a_reparent_slowed_before_its_lock_refuses_a_stale_plan() {
    if !tools() {
        return;
    }
    if FLOCK_NR == u32::MAX {
        vhdkit_testkit::skip_or_fail(
            "the flock syscall number of this architecture is not known here",
        );
        return;
    }
    for ext in ["vhd", "vhdx"] {
        let l = lab(ext);
        // B plans on the original bytes, then waits at its lock while A runs to completion.
        let b = slowed("flock", 4_000_000, &reparent_args(&l.child, &l.p2));
        wait_for("the slowed reparent reaches its lock", || {
            in_syscall(&b, FLOCK_NR)
        });
        let a = run(reparent_args(&l.child, &l.p1));
        assert_eq!(a.code, 0, "{ext}: {a:?}");
        let b = finish(b);
        assert_eq!(b.code, 1, "{ext}: the stale plan must be refused: {b:?}");
        assert!(
            b.stderr.contains("changed since the plan was made"),
            "{b:?}"
        );
        assert_all_from(&l.child, &l.p1, &l.p2);
    }
}

#[test]
fn repair_and_share_are_refused_while_a_reparent_writes() {
    if !tools() {
        return;
    }
    let l = lab("vhd");
    let a = slowed("pwrite64", 500_000, &reparent_args(&l.child, &l.p1));
    wait_for("the slowed reparent takes its lock", || flocked(&l.child));
    let r = run(["repair".as_ref(), l.child.as_os_str()]);
    assert_refused_in_use(&r, "repair");
    let shared = l.root.join("shared");
    let s = run([
        "share".as_ref(),
        l.root.as_os_str(),
        "--into".as_ref(),
        shared.as_os_str(),
    ]);
    assert_refused_in_use(&s, "share");
    let a = finish(a);
    assert_eq!(a.code, 0, "{a:?}");
    assert_all_from(&l.child, &l.p1, &l.p2);
}

#[test]
fn a_flock_holder_blocks_every_writer() {
    if !tools() || !need_tool("flock", "util-linux flock holds the lock") {
        return;
    }
    let l = lab("vhdx");
    let mut holder = Command::new("flock")
        .arg(&l.child)
        .args(["sleep", "30"])
        .spawn()
        .expect("spawn flock");
    wait_for("flock takes its lock", || flocked(&l.child));
    let before = sha256_file(&l.child);
    let shared = l.root.join("shared");
    let moved = l.root.join("moved");
    let mut dry = reparent_args(&l.child, &l.p1);
    dry.push("--dry-run".as_ref());
    let runs = vec![
        ("reparent", run(reparent_args(&l.child, &l.p1))),
        ("reparent --dry-run predicts it", run(&dry)),
        ("repair", run(["repair".as_ref(), l.child.as_os_str()])),
        (
            "repair --dry-run predicts it",
            run(["repair".as_ref(), "--dry-run".as_ref(), l.child.as_os_str()]),
        ),
        (
            "share",
            run([
                "share".as_ref(),
                l.root.as_os_str(),
                "--into".as_ref(),
                shared.as_os_str(),
            ]),
        ),
    ];
    for (what, r) in &runs {
        assert_refused_in_use(r, what);
    }
    // relink: the parent moved away, so the child needs repointing.
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(l.root.join("a-ref/base.vhdx"), moved.join("base.vhdx")).unwrap();
    std::fs::remove_file(&l.p1).unwrap();
    std::fs::remove_file(&l.p2).unwrap();
    let r = run(["relink".as_ref(), l.root.as_os_str()]);
    assert_refused_in_use(&r, "relink");
    assert_eq!(
        sha256_file(&l.child),
        before,
        "a writer changed a locked child"
    );
    // The `sleep` inherited the locked descriptor: end it (by its pid) before `flock` itself.
    let pid = holder.id();
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    for k in kids.split_whitespace() {
        let _ = Command::new("kill").arg(k).status();
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    wait_for("the lock is released", || !flocked(&l.child));
    run_success(["relink".as_ref(), l.root.as_os_str()]);
    assert_ne!(
        sha256_file(&l.child),
        before,
        "relink works once the lock is gone"
    );
}

#[test]
fn a_reparent_dry_run_predicts_the_refusal_of_a_read_only_child() {
    let l = lab("vhd");
    let mut perm = std::fs::metadata(&l.child).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&l.child, perm).unwrap();
    let mut dry = reparent_args(&l.child, &l.p1);
    dry.push("--dry-run".as_ref());
    let d = run(&dry);
    let r = run(reparent_args(&l.child, &l.p1));
    for (what, x) in [("dry run", &d), ("real run", &r)] {
        assert_eq!(x.code, 1, "{what}: {x:?}");
        assert!(x.stderr.contains("read-only"), "{what}: {x:?}");
    }
}
