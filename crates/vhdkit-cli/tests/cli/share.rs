//! `vhdkit share` and `vhdkit relink` through the real binary: the user's lab end to end (share
//! with --delete-copies, move the tree, relink; contents checked by vhdkit and libvhdi), and
//! every safety case: same id with different bytes, a locked child, a read-only child, a dry run
//! that writes nothing, a damaged disk skipped with a reason, idempotence, and a kill at every
//! changing step followed by a re-run.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;
use vhdkit::{Chain, ChainOptions};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::through::chain_sha;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
use vhdkit_testkit::{kill, Rng};

use crate::util::*;

const SIZE: u64 = 8 << 20;
const BS: u32 = 1 << 20;

/// 4 KiB-aligned random writes (libvhdi misreads partial VHD bitmap bytes).
fn scribble(rng: &mut Rng, n: usize, mut w: impl FnMut(u64, &[u8])) {
    for _ in 0..n {
        let page = rng.below(SIZE / 4096 - 4);
        let mut d = vec![0u8; 4096 * (1 + rng.below(3) as usize)];
        rng.fill(&mut d);
        w(page * 4096, &d);
    }
}

/// A lab like the user's: `VMs/VM1..VM4`, each with its own copy of the reference disk
/// (`ref.vhd`, and `ref.vhdx` when `vhdx`) and a differencing disk with distinct data over it;
/// VM4 also has a checkpoint over its VM-level disk (a chain of depth 3).
struct Lab {
    root: tempfile::TempDir,
    /// Every top-of-chain disk, relative to `VMs`, with its chain (relative names, child first;
    /// the last is the reference disk's file name).
    tops: Vec<Vec<String>>,
    ref_sizes: u64,
}

fn lab(vhdx: bool, vms: usize) -> Lab {
    let root = tmp();
    let mut rng = Rng::new(7);
    let mut tops = Vec::new();
    let mut ref_sizes = 0;
    // VHD reference disk.
    let mut base = VhdBuilder::dynamic(SIZE).block_size(BS);
    scribble(&mut rng, 30, |o, d| base.write(o, d));
    let base_bytes = base.build().bytes;
    ref_sizes += base_bytes.len() as u64;
    // VHDX reference disk.
    let mut xbase = VhdxBuilder::new(Kind::Dynamic, SIZE, BS, 512);
    xbase.data_write_guid = Uuid::new_v4();
    scribble(&mut rng, 30, |o, d| xbase.write(o, d));
    let xbase_bytes = xbase.build().bytes;
    if vhdx {
        ref_sizes += xbase_bytes.len() as u64;
    }
    for vm in 1..=vms {
        let dir = root.path().join(format!("VMs/VM{vm}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ref.vhd"), &base_bytes).unwrap();
        let mut c = VhdBuilder::differencing(SIZE, base.id())
            .block_size(BS)
            .parent_name("ref.vhd")
            .locator(Locator::w2ru(r".\ref.vhd"))
            .locator(Locator::w2ku(r"C:\Lab\VMs\VM1\ref.vhd"));
        scribble(&mut rng, 10, |o, d| c.write(o, d));
        c.build().write_to(&dir.join("vm.vhd"));
        if vm == vms {
            // A checkpoint over the VM-level disk: depth 3.
            let name = format!("vm_{}.avhd", Uuid::new_v4().to_string().to_uppercase());
            let mut k = VhdBuilder::differencing(SIZE, c.id())
                .block_size(BS)
                .parent_name("vm.vhd")
                .locator(Locator::w2ru(r".\vm.vhd"));
            scribble(&mut rng, 6, |o, d| k.write(o, d));
            k.build().write_to(&dir.join(&name));
            tops.push(vec![
                format!("VM{vm}/{name}"),
                format!("VM{vm}/vm.vhd"),
                "ref.vhd".into(),
            ]);
        } else {
            tops.push(vec![format!("VM{vm}/vm.vhd"), "ref.vhd".into()]);
        }
        if vhdx {
            std::fs::write(dir.join("ref.vhdx"), &xbase_bytes).unwrap();
            let mut x = VhdxBuilder::new(Kind::Differencing, SIZE, BS, 512);
            x.data_write_guid = Uuid::new_v4();
            x.parent_linkage = xbase.data_write_guid;
            x.relative_path = Some(r".\ref.vhdx".into());
            scribble(&mut rng, 10, |o, d| x.write(o, d));
            std::fs::write(dir.join("data.vhdx"), x.build().bytes).unwrap();
            tops.push(vec![format!("VM{vm}/data.vhdx"), "ref.vhdx".into()]);
        }
    }
    Lab {
        root,
        tops,
        ref_sizes,
    }
}

impl Lab {
    fn vms(&self) -> PathBuf {
        self.root.path().join("VMs")
    }
    fn shared(&self) -> PathBuf {
        self.root.path().join("Shared")
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn total_size(dir: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                use std::os::unix::fs::MetadataExt;
                if seen.insert((m.dev(), m.ino())) {
                    n += m.len();
                }
            }
        }
    }
    n
}

#[test]
fn lab_share_delete_copies_move_and_relink() {
    let vhdx = true;
    let lab = lab(vhdx, 4);
    let vms = lab.vms();
    let before: Vec<String> = lab
        .tops
        .iter()
        .map(|t| chain_sha(&vms.join(&t[0])))
        .collect();
    let size_before = total_size(lab.root.path());

    let r = run([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["applied"], true);
    let groups = if vhdx { 2 } else { 1 };
    assert_eq!(j["report"]["groups_done"], groups, "{r:?}");
    assert_eq!(j["report"]["children_repointed"], 4 * groups, "{r:?}");
    assert_eq!(j["report"]["copies_deleted"], 3 * groups, "{r:?}");
    // One copy of each reference disk remains, in Shared; the VM folders hold none.
    assert!(lab.shared().join("ref.vhd").is_file());
    assert_eq!(lab.shared().join("ref.vhdx").is_file(), vhdx);
    for vm in 1..=4 {
        assert!(!vms.join(format!("VM{vm}/ref.vhd")).exists());
        assert!(!vms.join(format!("VM{vm}/ref.vhdx")).exists());
    }
    let freed = lab.ref_sizes * 3;
    assert_eq!(total_size(lab.root.path()), size_before - freed);
    assert_eq!(j["report"]["bytes_freed_apparent"], freed);
    // "freed" itself is what `du` sees: the copies' allocated blocks (fewer than their length).
    let on_disk = j["report"]["bytes_freed"].as_u64().unwrap();
    assert!(on_disk > 0 && on_disk <= freed + 3 * 4096 * 3, "{r:?}");
    for (t, h) in lab.tops.iter().zip(&before) {
        assert_eq!(&chain_sha(&vms.join(&t[0])), h, "{t:?} after share");
    }

    // Second run: nothing to do.
    let r = run_success([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
    ]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");

    // Move: the VMs to one place, the shared folder to another (relative paths now wrong).
    let new = tmp();
    let new_vms = new.path().join("Hyper-V/VMs");
    let new_ref = new.path().join("Library/RefDisks");
    std::fs::create_dir_all(new_vms.parent().unwrap()).unwrap();
    std::fs::create_dir_all(new_ref.parent().unwrap()).unwrap();
    std::fs::rename(&vms, &new_vms).unwrap();
    std::fs::rename(lab.shared(), &new_ref).unwrap();
    let r = run(["chain", s(&new_vms.join(&lab.tops[0][0]))]);
    assert_eq!(r.code, 1, "broken after the move: {r:?}");

    let r = run_success([
        "relink",
        s(&new_vms),
        "--search",
        s(&new.path().join("Library")),
        "--dry-run",
    ]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    let r = run([
        "relink",
        s(&new_vms),
        "--search",
        s(&new.path().join("Library")),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["report"]["relinked"], 4 * groups, "{r:?}");
    let r = run_success([
        "relink",
        s(&new_vms),
        "--search",
        s(&new.path().join("Library")),
    ]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");

    for (t, h) in lab.tops.iter().zip(&before) {
        let top = new_vms.join(&t[0]);
        assert_eq!(&chain_sha(&top), h, "{t:?} after the move and relink");
        run_success(["chain", s(&top)]);
        // The independent reader, with the chain given explicitly.
        let mut chain: Vec<PathBuf> = t[..t.len() - 1].iter().map(|x| new_vms.join(x)).collect();
        chain.push(new_ref.join(t.last().unwrap()));
        let refs: Vec<&Path> = chain.iter().map(PathBuf::as_path).collect();
        if let Some((h2, size)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&refs) {
            assert_eq!(size, SIZE);
            assert_eq!(&h2, h, "libvhdi reads {t:?} differently");
        }
    }
}

#[test]
fn same_id_different_bytes_is_left_alone() {
    let lab = lab(false, 3);
    let vms = lab.vms();
    // VM3's copy: same id, one changed data sector.
    let odd = vms.join("VM3/ref.vhd");
    let mut bytes = std::fs::read(&odd).unwrap();
    // Flip a byte inside the first allocated data block (after the header, BAT and bitmap).
    let c = Chain::open(&odd, &ChainOptions::default()).unwrap();
    let mut view = c.into_view();
    let mut first = vec![0u8; 4096];
    let mut off = 0;
    loop {
        use std::io::{Read, Seek, SeekFrom};
        view.seek(SeekFrom::Start(off)).unwrap();
        view.read_exact(&mut first).unwrap();
        if first.iter().any(|&x| x != 0) {
            break;
        }
        off += 4096;
    }
    let pos = bytes
        .windows(64)
        .position(|w| w == &first[..64])
        .expect("data in file");
    bytes[pos] ^= 0xFF;
    std::fs::write(&odd, &bytes).unwrap();
    let odd_child = vms.join("VM3/vm.vhd");
    let untouched = Snapshot::files(&[&odd, &odd_child]);

    let r = run([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("CONFLICT"), "{r:?}");
    assert!(r.stdout.contains(s(&odd)), "{r:?}");
    // The odd copy and its child are untouched; the others were shared.
    untouched.assert_unchanged("the conflicting copy and its child");
    assert!(lab.shared().join("ref.vhd").is_file());
    assert!(!vms.join("VM2/ref.vhd").exists());
}

#[test]
fn locked_child_is_refused_and_nothing_changes_for_it() {
    let lab = lab(false, 2);
    let vms = lab.vms();
    let child = vms.join("VM2/vm.vhd");
    let before = Snapshot::files(&[&child, &vms.join("VM2/ref.vhd")]);
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&child)
        .unwrap();
    holder.try_lock().unwrap();
    let r = run([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("in use by another process"), "{r:?}");
    // The child and its parent copy (kept, since not every child of the group moved).
    before.assert_unchanged("locked child");
    drop(holder);
    // Once released, a re-run finishes the job.
    run_success([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
    ]);
    assert!(!vms.join("VM2/ref.vhd").exists());
    run_success(["chain", s(&child)]);
}

#[test]
fn read_only_child_is_refused() {
    let lab = lab(false, 2);
    let vms = lab.vms();
    let child = vms.join("VM1/vm.vhd");
    let mut perm = std::fs::metadata(&child).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&child, perm).unwrap();
    let before = Snapshot::files(&[&child]);
    let r = run(["share", s(&vms), "--into", s(&lab.shared())]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("read-only"), "{r:?}");
    before.assert_unchanged("read-only child");
    assert!(std::fs::metadata(&child).unwrap().permissions().readonly());
}

#[test]
fn dry_run_writes_nothing() {
    let lab = lab(false, 4);
    let before = Snapshot::tree(lab.root.path());
    let r = run_success([
        "share",
        s(&lab.vms()),
        "--into",
        s(&lab.shared()),
        "--dry-run",
        "--delete-copies",
    ]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    assert!(r.stdout.contains("repoint"), "{r:?}");
    let text = r.stdout;
    let r = run_success([
        "share",
        s(&lab.vms()),
        "--into",
        s(&lab.shared()),
        "--dry-run",
        "--json",
    ]);
    assert_eq!(r.json()["applied"], false);
    // Every child: the first copy moves into Shared, so its child is repointed too.
    assert_eq!(r.json()["plan"]["children_to_repoint"], 4);
    // The summary names the bytes read (each copy once, holes skipped) as read, not "hashed".
    let read = r.json()["plan"]["bytes_read"].as_u64().unwrap();
    assert!(read > 0, "{r:?}");
    let line = text
        .lines()
        .find(|l| l.contains("of virtual contents"))
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    assert!(
        line.starts_with("read ") && line.contains(&format!("({read} bytes) of virtual contents")),
        "{line}"
    );
    let r = run_success(["relink", s(&lab.vms()), "--dry-run"]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");
    before.assert_unchanged("dry runs");
}

#[test]
fn damaged_disk_is_skipped_with_a_reason() {
    let lab = lab(false, 2);
    let vms = lab.vms();
    // A VHD footer signature on garbage.
    let bad = vms.join("VM1/broken.vhd");
    let mut junk = vec![0u8; 4096];
    junk[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
    std::fs::write(&bad, &junk).unwrap();
    // Not a disk at all: ignored silently.
    std::fs::write(vms.join("VM1/notes.txt"), b"hello").unwrap();
    let before = Snapshot::files(&[&bad, &vms.join("VM1/notes.txt")]);
    let r = run(["share", s(&vms), "--into", s(&lab.shared()), "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    let skipped = j["plan"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{r:?}");
    assert!(skipped[0]["path"].as_str().unwrap().ends_with("broken.vhd"));
    assert!(!skipped[0]["reason"].as_str().unwrap().is_empty());
    before.assert_unchanged("a damaged disk and a non-disk");
    // The rest was still done.
    assert_eq!(j["report"]["children_repointed"], 2, "{r:?}");
}

#[test]
fn symlinked_parent_is_replaced_by_a_real_reparent() {
    let lab = lab(false, 2);
    let vms = lab.vms();
    // The mklink setup: one real reference disk, a symlink in each VM folder.
    let refdir = lab.root.path().join("Ref");
    std::fs::create_dir_all(&refdir).unwrap();
    std::fs::rename(vms.join("VM1/ref.vhd"), refdir.join("ref.vhd")).unwrap();
    std::fs::remove_file(vms.join("VM2/ref.vhd")).unwrap();
    for vm in ["VM1", "VM2"] {
        std::os::unix::fs::symlink(refdir.join("ref.vhd"), vms.join(vm).join("ref.vhd")).unwrap();
    }
    let before = chain_sha(&vms.join("VM1/vm.vhd"));
    let r = run([
        "share",
        s(&vms),
        "--into",
        s(&lab.shared()),
        "--delete-copies",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("symlink to this parent"), "{r:?}");
    for vm in ["VM1", "VM2"] {
        assert!(
            std::fs::symlink_metadata(vms.join(vm).join("ref.vhd")).is_err(),
            "link removed"
        );
        let c = Chain::open(vms.join(vm).join("vm.vhd"), &ChainOptions::default()).unwrap();
        assert_eq!(
            std::fs::canonicalize(c.disks()[1].path().unwrap()).unwrap(),
            std::fs::canonicalize(refdir.join("ref.vhd")).unwrap()
        );
    }
    // The only copy stays where it is.
    assert!(refdir.join("ref.vhd").is_file());
    assert_eq!(chain_sha(&vms.join("VM1/vm.vhd")), before);
}

/// Kill the process after every changing step in turn (the test hook aborts as a kill would);
/// after each, a re-run completes with nothing lost.
#[test]
fn kill_at_every_step_then_rerun_completes() {
    let mut k = 1;
    loop {
        let lab = lab(false, 3);
        let vms = lab.vms();
        let before: Vec<String> = lab
            .tops
            .iter()
            .map(|t| chain_sha(&vms.join(&t[0])))
            .collect();
        let o = vhdkit()
            .args([
                "share",
                s(&vms),
                "--into",
                s(&lab.shared()),
                "--delete-copies",
            ])
            .env("VHDKIT_TEST_ABORT_AFTER_STEPS", k.to_string())
            .output()
            .unwrap();
        // The hook aborts (SIGABRT) after step k; past the last step the run completes.
        let killed = o.status.signal() == Some(6);
        assert!(killed || o.status.success(), "step {k}: {o:?}");
        // Whatever the moment, every chain reads the same (no child without a parent).
        for (t, h) in lab.tops.iter().zip(&before) {
            assert_eq!(
                &chain_sha(&vms.join(&t[0])),
                h,
                "after a kill at step {k}: {t:?}"
            );
        }
        let r = run([
            "share",
            s(&vms),
            "--into",
            s(&lab.shared()),
            "--delete-copies",
        ]);
        assert_eq!(r.code, 0, "re-run after a kill at step {k}: {r:?}");
        for (t, h) in lab.tops.iter().zip(&before) {
            assert_eq!(
                &chain_sha(&vms.join(&t[0])),
                h,
                "after the re-run (kill at {k}): {t:?}"
            );
        }
        for vm in 1..=3 {
            assert!(!vms.join(format!("VM{vm}/ref.vhd")).exists(), "kill at {k}");
        }
        assert!(lab.shared().join("ref.vhd").is_file());
        let r = run_success([
            "share",
            s(&vms),
            "--into",
            s(&lab.shared()),
            "--delete-copies",
        ]);
        assert!(r.stdout.contains("nothing to do"), "kill at {k}: {r:?}");
        if !killed {
            assert!(k > 3, "the run should have had several steps");
            break;
        }
        k += 1;
    }
}

/// A real SIGKILL at the first, a middle and the last `pwrite64` of a share run (counted on an
/// identical lab), and one injection past the last that must complete: a re-run after each kill
/// completes and every chain reads the same.
#[test]
fn sigkill_during_writes_then_rerun_completes() {
    if !have_tool("strace", "share kill test") {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_vhdkit"));
    let share_args = |lab: &Lab| -> Vec<String> {
        let vms = lab.vms();
        [
            "share",
            s(&vms),
            "--into",
            s(&lab.shared()),
            "--delete-copies",
        ]
        .map(str::to_string)
        .to_vec()
    };
    let counting = lab(false, 3);
    let total = kill::count_syscalls(
        bin,
        &share_args(&counting),
        "pwrite64",
        &counting.root.path().join("strace.log"),
    )
    .get("pwrite64")
    .copied()
    .unwrap_or(0);
    assert!(
        total >= 4,
        "a share run of three VMs writes more than {total} times"
    );
    for n in [1, total / 2, total, total + 1] {
        let lab = lab(false, 3);
        let vms = lab.vms();
        let before: Vec<String> = lab
            .tops
            .iter()
            .map(|t| chain_sha(&vms.join(&t[0])))
            .collect();
        let args = share_args(&lab);
        if n > total {
            kill::run_past_last(bin, &args, "pwrite64", total);
        } else {
            kill::run_killed_at(bin, &args, "pwrite64", n);
        }
        let r = run(&args);
        assert_eq!(r.code, 0, "re-run after SIGKILL at pwrite {n}: {r:?}");
        for (t, h) in lab.tops.iter().zip(&before) {
            assert_eq!(
                &chain_sha(&vms.join(&t[0])),
                h,
                "SIGKILL at pwrite {n}: {t:?}"
            );
        }
    }
}

/// A real SIGKILL before each durability barrier of the batched reparents (`syncfs`), and in
/// the middle of the journal renames and removals: a re-run completes and every chain reads
/// the same.
#[test]
fn sigkill_at_batch_barriers_then_rerun_completes() {
    if !cfg!(target_os = "linux") || !have_tool("strace", "share barrier kill test") {
        return;
    }
    let cases = [
        ("syncfs", 1),
        ("syncfs", 2),
        ("syncfs", 3),
        ("syncfs", 4),
        ("rename", 2),
        ("unlink", 2),
    ];
    for (call, n) in cases {
        let lab = lab(false, 3);
        let vms = lab.vms();
        let before: Vec<String> = lab
            .tops
            .iter()
            .map(|t| chain_sha(&vms.join(&t[0])))
            .collect();
        // Every case is a point the run reaches: the process must really die there.
        kill::run_killed_at(
            Path::new(env!("CARGO_BIN_EXE_vhdkit")),
            &[
                "share",
                s(&vms),
                "--into",
                s(&lab.shared()),
                "--delete-copies",
            ],
            call,
            n,
        );
        for (t, h) in lab.tops.iter().zip(&before) {
            assert_eq!(
                &chain_sha(&vms.join(&t[0])),
                h,
                "SIGKILL at {call} {n}: {t:?}"
            );
        }
        let r = run([
            "share",
            s(&vms),
            "--into",
            s(&lab.shared()),
            "--delete-copies",
        ]);
        assert_eq!(r.code, 0, "re-run after SIGKILL at {call} {n}: {r:?}");
        for (t, h) in lab.tops.iter().zip(&before) {
            assert_eq!(
                &chain_sha(&vms.join(&t[0])),
                h,
                "SIGKILL at {call} {n}: {t:?}"
            );
        }
        let r = run_success([
            "share",
            s(&vms),
            "--into",
            s(&lab.shared()),
            "--delete-copies",
        ]);
        assert!(r.stdout.contains("nothing to do"), "{call} {n}: {r:?}");
    }
}
