//! `share`, `relink` and `check DIR` on trees they cannot fully see, run as an unprivileged user
//! (`runuser -u nobody`): an unreadable child, an unlistable VM folder, a dangling link, a link
//! into a closed folder, a symlinked folder, a tree past the depth bound. Each obstacle is a
//! finding with its reason (exit 1), and nothing is deleted or changed because of a partial view.
//! Also: dry runs predict the real run's refusals, relink conflicts, and the names `share` keeps.
//!
//! To extend: add an [`Obstacle`] (how to plant it, the `check` code, a phrase of its reason);
//! every command below runs against it.

use std::collections::BTreeMap;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use vhdkit::{Chain, ChainOptions};
use vhdkit_testkit::sha256_reader;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

use crate::util::*;

const SIZE: u64 = 4 << 20;
const BS: u32 = 1 << 20;
pub(crate) const NOBODY: u32 = 65534;

/// True when tests can run the binary as `nobody`: root, `runuser`, and a binary and temporary
/// folder that `nobody` can reach. Otherwise prints a SKIP line, or fails under CI=true (CI runs
/// as root, so a skip there would hide a regression).
pub(crate) fn nobody_available() -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let nobody_runs = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    let runs =
        root && nobody_runs(Command::new("runuser").args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_vhdkit"),
            "--version",
        ])) && nobody_runs(
            Command::new("runuser")
                .args(["-u", "nobody", "--", "test", "-x"])
                .arg(std::env::temp_dir()),
        );
    if !runs {
        let why = "partial-tree tests need root, `runuser`, and the vhdkit binary and the \
                   temporary folder reachable by `nobody`";
        vhdkit_testkit::skip_or_fail(why);
    }
    runs
}

/// Run `vhdkit ARGS` as `nobody`.
pub(crate) fn as_nobody(args: &[&str]) -> Run {
    Command::new("runuser")
        .args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_vhdkit")])
        .args(args)
        .output()
        .expect("spawn runuser")
        .into()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A lab under a tempdir that `nobody` owns (the tempdir itself is opened to others):
/// `VMs/VM1..VM2/ref.vhd` (identical copies) each with `vm.vhd` over it, relative locators.
pub(crate) struct Lab {
    _tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl Lab {
    pub(crate) fn new() -> Lab {
        let tmp = tmp();
        let root = tmp.path().join("lab");
        let mut base = VhdBuilder::dynamic(SIZE).block_size(BS);
        base.write(0, &[7u8; 4096]);
        let base_bytes = base.build().bytes;
        for vm in 1..=2u8 {
            let dir = root.join(format!("VMs/VM{vm}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ref.vhd"), &base_bytes).unwrap();
            let mut c = VhdBuilder::differencing(SIZE, base.id())
                .block_size(BS)
                .parent_name("ref.vhd")
                .locator(Locator::w2ru(r".\ref.vhd"));
            c.write(u64::from(vm) * 8192, &[vm; 4096]);
            c.build().write_to(&dir.join("vm.vhd"));
        }
        let lab = Lab { _tmp: tmp, root };
        open_to_nobody(lab._tmp.path(), &lab.root);
        lab
    }
    pub(crate) fn vms(&self) -> PathBuf {
        self.root.join("VMs")
    }
    pub(crate) fn shared(&self) -> PathBuf {
        self.root.join("Shared")
    }
}

/// `nobody` owns everything under `root`; `top` (the tempdir) is traversable.
fn open_to_nobody(top: &Path, root: &Path) {
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
}

/// Every path under `dir` (as root) with its bytes' hash and mtime (links: their target text).
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap().display().to_string();
                out.insert(p, (t, None));
            } else if m.is_dir() {
                stack.push(p);
            } else {
                let h = sha256_file(&p);
                out.insert(p, (h, m.modified().ok()));
            }
        }
    }
    out
}

/// The virtual contents of a child through its chain (as root).
fn vsha(top: &Path) -> String {
    let c = Chain::open(top, &ChainOptions::default()).unwrap();
    sha256_reader(c.into_view())
}

/// Something in the tree that cannot be inspected.
struct Obstacle {
    name: &'static str,
    /// The `check` code it is reported under.
    code: &'static str,
    /// A phrase of the reason every command prints.
    reason: &'static str,
    plant: fn(&Lab),
}

pub(crate) fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

const OBSTACLES: &[Obstacle] = &[
    Obstacle {
        name: "an unreadable child",
        code: "tree.unreadable",
        reason: "cannot be read",
        plant: |l| chmod(&l.vms().join("VM2/vm.vhd"), 0o000),
    },
    Obstacle {
        name: "an unlistable VM folder",
        code: "tree.unlistable",
        reason: "cannot be listed",
        plant: |l| {
            // A third VM whose folder is closed: its child could use either copy.
            let d = l.vms().join("VM3");
            std::fs::create_dir(&d).unwrap();
            std::fs::copy(l.vms().join("VM1/vm.vhd"), d.join("vm.vhd")).unwrap();
            chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
            chmod(&d, 0o300);
        },
    },
    Obstacle {
        name: "a folder that can be listed but not entered",
        code: "tree.unreadable",
        reason: "cannot be examined",
        plant: |l| {
            let d = l.vms().join("VM3");
            std::fs::create_dir(&d).unwrap();
            std::fs::copy(l.vms().join("VM1/vm.vhd"), d.join("vm.vhd")).unwrap();
            chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
            chmod(&d, 0o600);
        },
    },
    Obstacle {
        name: "a dangling link",
        code: "tree.link_unresolved",
        reason: "cannot be examined",
        plant: |l| symlink(l.root.join("gone/vm.vhd"), l.vms().join("VM2/old.vhd")).unwrap(),
    },
    Obstacle {
        name: "a link into a closed folder",
        code: "tree.link_unresolved",
        reason: "cannot be examined",
        plant: |l| {
            let closed = l.root.join("closed");
            std::fs::create_dir(&closed).unwrap();
            std::fs::copy(l.vms().join("VM2/vm.vhd"), closed.join("vm.vhd")).unwrap();
            chmod(&closed, 0o700); // owned by root
            symlink(closed.join("vm.vhd"), l.vms().join("VM2/elsewhere.vhd")).unwrap();
        },
    },
    Obstacle {
        name: "a symlinked folder",
        code: "tree.symlinked_folder",
        reason: "symlinked folder",
        plant: |l| {
            let other = l.root.join("other");
            std::fs::create_dir(&other).unwrap();
            std::fs::copy(l.vms().join("VM2/vm.vhd"), other.join("vm.vhd")).unwrap();
            open_to_nobody(l.root.parent().unwrap(), &other);
            symlink(&other, l.vms().join("VM3")).unwrap();
        },
    },
    Obstacle {
        name: "a tree past the depth bound",
        code: "tree.too_deep",
        reason: "deeper than",
        plant: |l| {
            let mut d = l.vms().join("deep");
            for _ in 0..66 {
                d.push("d");
            }
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(l.vms().join("VM2/vm.vhd"), d.join("vm.vhd")).unwrap();
            open_to_nobody(l.root.parent().unwrap(), &l.vms().join("deep"));
        },
    },
];

/// Obstacles only `share` sees: it walks SHARED as well as DIR.
const SHARED_OBSTACLES: &[Obstacle] = &[Obstacle {
    name: "an unreadable file in SHARED",
    code: "tree.unreadable",
    reason: "cannot be read",
    plant: |l| {
        let sh = l.shared();
        std::fs::create_dir(&sh).unwrap();
        std::fs::copy(l.vms().join("VM2/vm.vhd"), sh.join("other-vm.vhd")).unwrap();
        open_to_nobody(l.root.parent().unwrap(), &sh);
        chmod(&sh.join("other-vm.vhd"), 0o000);
    },
}];

fn share_obstacles() -> impl Iterator<Item = &'static Obstacle> {
    OBSTACLES.iter().chain(SHARED_OBSTACLES)
}

fn lab_with(o: &Obstacle) -> Lab {
    let lab = Lab::new();
    (o.plant)(&lab);
    lab
}

fn assert_reported(r: &Run, o: &Obstacle, what: &str) {
    assert_eq!(r.code, 1, "{what} with {}: {r:?}", o.name);
    assert!(r.stdout.contains(o.reason), "{what} with {}: {r:?}", o.name);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

#[test]
fn share_dry_run_reports_and_changes_nothing() {
    if !nobody_available() {
        return;
    }
    for o in share_obstacles() {
        let lab = lab_with(o);
        let before = snapshot(&lab.root);
        let (v, sh) = (lab.vms(), lab.shared());
        let r = as_nobody(&[
            "share",
            s(&v),
            "--into",
            s(&sh),
            "--delete-copies",
            "--dry-run",
        ]);
        assert_reported(&r, o, "share --dry-run");
        assert!(r.stdout.contains("UNINSPECTED"), "{r:?}");
        assert!(
            r.stdout.contains("could not be inspected"),
            "{}: {r:?}",
            o.name
        );
        assert!(!r.stdout.contains("-> deleted once"), "{}: {r:?}", o.name);
        assert_eq!(
            snapshot(&lab.root),
            before,
            "{}: the dry run changed files",
            o.name
        );
    }
}

#[test]
fn share_deletes_nothing_while_anything_is_uninspected() {
    if !nobody_available() {
        return;
    }
    for o in share_obstacles() {
        let lab = lab_with(o);
        let v = lab.vms();
        let tops = [v.join("VM1/vm.vhd"), v.join("VM2/vm.vhd")];
        let contents: Vec<Option<String>> = tops
            .iter()
            .map(|t| (std::fs::metadata(t).unwrap().mode() & 0o444 != 0).then(|| vsha(t)))
            .collect();
        let before = snapshot(&lab.root);
        let sh = lab.shared();
        let r = as_nobody(&[
            "share",
            s(&v),
            "--into",
            s(&sh),
            "--delete-copies",
            "--json",
        ]);
        assert_reported(&r, o, "share --delete-copies");
        let j = r.json();
        assert_eq!(j["report"]["copies_deleted"], 0, "{}: {j}", o.name);
        assert_eq!(j["report"]["old_names_removed"], 0, "{}: {j}", o.name);
        // Every name is still there; all but the repointed children keep bytes and mtime.
        let after = snapshot(&lab.root);
        for (p, (h, t)) in &before {
            let now = after.get(p);
            assert!(now.is_some(), "{}: {} was removed", o.name, p.display());
            let changeable = tops
                .iter()
                .zip(&contents)
                .any(|(t, c)| t == p && c.is_some());
            if !changeable {
                assert_eq!(
                    now,
                    Some(&(h.clone(), *t)),
                    "{}: {} changed",
                    o.name,
                    p.display()
                );
            }
        }
        for (t, c) in tops.iter().zip(&contents) {
            if let Some(c) = c {
                assert_eq!(&vsha(t), c, "{}: {} reads differently", o.name, t.display());
            }
        }
    }
}

#[test]
fn relink_and_check_report_every_obstacle() {
    if !nobody_available() {
        return;
    }
    for o in OBSTACLES {
        let lab = lab_with(o);
        let before = snapshot(&lab.root);
        let r = as_nobody(&["relink", s(&lab.vms())]);
        assert_reported(&r, o, "relink");
        assert!(r.stdout.contains("UNINSPECTED"), "{r:?}");
        assert!(!r.stdout.contains("nothing to do:"), "{}: {r:?}", o.name);
        let r = as_nobody(&["relink", s(&lab.vms()), "--dry-run"]);
        assert_reported(&r, o, "relink --dry-run");
        let r = as_nobody(&["check", s(&lab.vms())]);
        assert_reported(&r, o, "check DIR");
        assert!(r.stdout.contains(o.code), "{}: {r:?}", o.name);
        assert!(
            r.stdout.contains("1 path(s) could not be inspected"),
            "{r:?}"
        );
        let j = as_nobody(&["check", "--json", s(&lab.vms())]).json();
        assert_eq!(j["clean"], false, "{}: {j}", o.name);
        assert_eq!(j["not_inspected"], 1, "{}: {j}", o.name);
        let codes: Vec<&str> = j["files"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["findings"].as_array().unwrap())
            .filter_map(|f| f["code"].as_str())
            .collect();
        assert_eq!(
            codes,
            vec![o.code],
            "{}: only the obstacle is a finding",
            o.name
        );
        assert_eq!(
            snapshot(&lab.root),
            before,
            "{}: relink/check changed files",
            o.name
        );
    }
}

/// A child `nobody` may read but not write (owned by root, mode 0644: its mode bits alone look
/// writable to a check of the owner bit): the dry run refuses it as the real run does.
#[test]
fn dry_run_predicts_the_real_refusals() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    let v = lab.vms();
    let child = v.join("VM2/vm.vhd");
    chown(&child, Some(0), Some(0)).unwrap();
    chmod(&child, 0o644);
    // And a VM folder that refuses new files (the journal beside a VHD child).
    let closed = v.join("VM1");
    chown(&closed, Some(0), Some(0)).unwrap();
    let sh = lab.shared();
    let args = ["share", s(&v), "--into", s(&sh), "--delete-copies"];
    let before = snapshot(&lab.root);
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let d = as_nobody(&dry);
    assert_eq!(d.code, 1, "{d:?}");
    assert_eq!(snapshot(&lab.root), before);
    let real = as_nobody(&args);
    assert_eq!(real.code, 1, "{real:?}");
    for c in [&child, &v.join("VM1/vm.vhd")] {
        let refused = |r: &Run| {
            r.stdout
                .lines()
                .any(|l| l.contains("REFUSED") && l.contains(s(c)))
        };
        assert!(
            refused(&d),
            "dry run did not predict {}: {d:?}",
            c.display()
        );
        assert!(
            refused(&real),
            "real run did not refuse {}: {real:?}",
            c.display()
        );
    }
    assert!(d.stdout.contains("cannot be opened for writing"), "{d:?}");
    assert!(d.stdout.contains("does not allow creating"), "{d:?}");
    // The group cannot be finished: the plan keeps its copies, as the real run does.
    assert!(!d.stdout.contains("-> deleted once"), "{d:?}");
    assert!(d.stdout.contains("frees 0 B on disk"), "{d:?}");
    assert!(
        d.stdout
            .contains("kept: not every child of its group can be"),
        "{d:?}"
    );
    assert!(
        real.stdout
            .contains("kept: not every child of its group can be"),
        "{real:?}"
    );
    assert_eq!(
        snapshot(&v),
        snapshot_of(&before, &v),
        "refused children changed"
    );
}

fn snapshot_of(
    all: &BTreeMap<PathBuf, (String, Option<SystemTime>)>,
    under: &Path,
) -> BTreeMap<PathBuf, (String, Option<SystemTime>)> {
    all.iter()
        .filter(|(p, _)| p.starts_with(under))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

/// Two files carry the id the child records, with different contents: relink refuses, naming
/// both; once their contents are equal, either one is fine.
#[test]
fn relink_conflict_is_refused_unless_contents_are_equal() {
    let t = tmp();
    let r = t.path();
    let mut a = VhdBuilder::dynamic(SIZE).block_size(BS);
    a.write(0, &[1u8; 4096]);
    let mut b = VhdBuilder::dynamic(SIZE).block_size(BS).unique_id(a.id());
    b.write(0, &[2u8; 4096]);
    for d in ["A", "B", "C"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    a.build().write_to(&r.join("A/base.vhd"));
    b.build().write_to(&r.join("B/base.vhd"));
    let child = r.join("C/vm.vhd");
    VhdBuilder::differencing(SIZE, a.id())
        .block_size(BS)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(r"..\moved\base.vhd"))
        .build()
        .write_to(&child);
    let before = snapshot(r);
    let out = run(["relink", s(r)]);
    assert_eq!(out.code, 1, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("CONFLICT"))
        .unwrap_or_default();
    assert!(line.contains(s(&child)), "{out:?}");
    assert!(
        line.contains("A/base.vhd") && line.contains("B/base.vhd"),
        "{out:?}"
    );
    assert_eq!(snapshot(r), before, "a conflict changed files");
    let j = run(["relink", s(r), "--dry-run", "--json"]).json();
    assert_eq!(j["plan"]["conflicts"].as_array().unwrap().len(), 1, "{j}");

    // Same contents, different layout (B rebuilt with A's data): proven equal, relinked.
    let mut b2 = VhdBuilder::dynamic(SIZE)
        .block_size(BS << 1)
        .unique_id(a.id());
    b2.write(0, &[1u8; 4096]);
    b2.build().write_to(&r.join("B/base.vhd"));
    let out = run(["relink", s(r)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("1 children repointed"), "{out:?}");
    run_success(["chain", s(&child)]);
}

/// A 3-level chain copied into two VMs: one `--delete-copies` run leaves one copy of each
/// level (the copied middle keeper's source included), and a second run has nothing to do.
#[test]
fn three_level_chain_is_finished_by_one_run() {
    let t = tmp();
    let v = t.path().join("VMs");
    let shared = t.path().join("Shared");
    let mut base = VhdBuilder::dynamic(SIZE).block_size(BS);
    base.write(0, &[3u8; 4096]);
    let base_bytes = base.build().bytes;
    let mut mid = VhdBuilder::differencing(SIZE, base.id())
        .block_size(BS)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(r".\base.vhd"));
    mid.write(8192, &[4u8; 4096]);
    let mid_bytes = mid.build().bytes;
    let mut tops = Vec::new();
    for vm in 1..=2u8 {
        let d = v.join(format!("VM{vm}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("base.vhd"), &base_bytes).unwrap();
        std::fs::write(d.join("mid.vhd"), &mid_bytes).unwrap();
        let mut top = VhdBuilder::differencing(SIZE, mid.id())
            .block_size(BS)
            .parent_name("mid.vhd")
            .locator(Locator::w2ru(r".\mid.vhd"));
        top.write(16384, &[vm; 4096]);
        top.build().write_to(&d.join("top.vhd"));
        tops.push((d.join("top.vhd"), vsha(&d.join("top.vhd"))));
    }
    let args = ["share", s(&v), "--into", s(&shared), "--delete-copies"];
    let r = run(args);
    assert_eq!(r.code, 0, "{r:?}");
    for vm in 1..=2 {
        for f in ["base.vhd", "mid.vhd"] {
            let p = v.join(format!("VM{vm}/{f}"));
            assert!(!p.exists(), "{} left behind: {r:?}", p.display());
        }
    }
    assert!(shared.join("base.vhd").is_file() && shared.join("mid.vhd").is_file());
    for (p, h) in &tops {
        assert_eq!(&vsha(p), h, "{} reads differently", p.display());
    }
    let again = run(args);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("nothing to do: every child"),
        "{again:?}"
    );
}

/// `VMs/VM1/base.vhd` with a child, and a copy outside DIR (`Other/base.vhd`) that VM2's
/// child uses.
fn tree_with_outside_copy(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let v = t.join("VMs");
    let other = t.join("Other");
    let shared = t.join("Shared");
    let mut base = VhdBuilder::dynamic(SIZE).block_size(BS);
    base.write(0, &[5u8; 4096]);
    let bytes = base.build().bytes;
    for (d, loc) in [("VM1", r".\base.vhd"), ("VM2", r"..\..\Other\base.vhd")] {
        let d = v.join(d);
        std::fs::create_dir_all(&d).unwrap();
        VhdBuilder::differencing(SIZE, base.id())
            .block_size(BS)
            .parent_name("base.vhd")
            .locator(Locator::w2ru(loc))
            .build()
            .write_to(&d.join("vm.vhd"));
    }
    std::fs::write(v.join("VM1/base.vhd"), &bytes).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("base.vhd"), &bytes).unwrap();
    (v, other, shared)
}

/// Without `--delete-copies` no name is removed (a moved keeper's old name stays as a hard link);
/// with it, a copy outside DIR is kept and says so (not "no --delete-copies").
#[test]
fn names_are_kept_with_the_real_reason() {
    let t = tmp();
    let (v, _, shared) = tree_with_outside_copy(t.path());
    let before = snapshot(t.path());
    let r = run(["share", s(&v), "--into", s(&shared)]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("no --delete-copies"), "{r:?}");
    assert!(
        v.join("VM1/base.vhd").is_file(),
        "a name was removed without --delete-copies"
    );
    for p in before.keys() {
        assert!(
            p.exists(),
            "{} removed without --delete-copies",
            p.display()
        );
    }
    let again = run(["share", s(&v), "--into", s(&shared)]);
    assert!(
        again.stdout.contains("nothing to do: every child"),
        "{again:?}"
    );

    let t = tmp();
    let (v, other, shared) = tree_with_outside_copy(t.path());
    let r = run(["share", s(&v), "--into", s(&shared), "--delete-copies"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("outside DIR"), "{r:?}");
    assert!(!r.stdout.contains("no --delete-copies"), "{r:?}");
    assert!(
        !v.join("VM1/base.vhd").exists(),
        "the old name stays with --delete-copies"
    );
    assert!(
        other.join("base.vhd").is_file(),
        "a copy outside DIR was deleted"
    );
}

/// relink must choose a parent for a child whose parent no longer resolves; while a folder
/// cannot be listed, it may hide another file with that id, so the child is left alone. Once
/// the folder opens, the same run repoints it.
#[test]
fn relink_does_not_choose_from_a_partial_view() {
    if !nobody_available() {
        return;
    }
    let t = tmp();
    let root = t.path().join("lab");
    let (vms, lib) = (root.join("VMs"), root.join("Library"));
    let mut base = VhdBuilder::dynamic(SIZE).block_size(BS);
    base.write(0, &[6u8; 4096]);
    std::fs::create_dir_all(vms.join("VM1")).unwrap();
    std::fs::create_dir_all(vms.join("VM2")).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    base.build().write_to(&lib.join("base.vhd"));
    let child = vms.join("VM1/vm.vhd");
    VhdBuilder::differencing(SIZE, base.id())
        .block_size(BS)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(r"..\..\Moved\base.vhd"))
        .build()
        .write_to(&child);
    open_to_nobody(t.path(), &root);
    chmod(&vms.join("VM2"), 0o300);
    let before = snapshot(&root);
    let args = ["relink", s(&vms), "--search", s(&lib)];
    let r = as_nobody(&args);
    assert_eq!(r.code, 1, "{r:?}");
    let line = format!("REFUSED: {}: not repointed", s(&child));
    assert!(r.stdout.contains(&line), "{r:?}");
    assert!(
        r.stdout.contains("0 children to repoint (1 more refused)"),
        "{r:?}"
    );
    assert!(r.stdout.contains("could not be inspected"), "{r:?}");
    assert_eq!(
        snapshot(&root),
        before,
        "a child was repointed from a partial view"
    );

    chmod(&vms.join("VM2"), 0o755);
    let r = as_nobody(&args);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1 children repointed"), "{r:?}");
    run_success(["chain", s(&child)]);
}

/// SHARED cannot be created (its folder belongs to root): the dry run says so, the real run
/// refuses the group the same way, and nothing changes.
#[test]
fn dry_run_predicts_an_unwritable_shared_folder() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    chown(&lab.root, Some(0), Some(0)).unwrap();
    let (v, sh) = (lab.vms(), lab.shared());
    let before = snapshot(&lab.root);
    let args = ["share", s(&v), "--into", s(&sh), "--delete-copies"];
    let d = as_nobody(&[&args[..], &["--dry-run"]].concat());
    let real = as_nobody(&args);
    for r in [&d, &real] {
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stdout.contains("REFUSED"), "{r:?}");
        assert!(r.stdout.contains("does not allow creating"), "{r:?}");
    }
    assert!(d.stdout.contains("frees 0 B"), "{d:?}");
    assert_eq!(snapshot(&lab.root), before, "something changed");
    assert!(!sh.exists());
}
