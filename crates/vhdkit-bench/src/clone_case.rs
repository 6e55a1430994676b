//! Cases on an XFS file system with reflink, where `convert` clones payload instead of copying
//! it: a loop file is made and mounted in the case folder (root only; otherwise the case says
//! SKIP loudly and runs nothing), the inputs and outputs live on it, and a watchdog process
//! unmounts it and removes the loop file once this process has exited, however it exits.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{prepare_convert, run_quiet, Case, Check, Config, Prepared, Res};

/// The two cases, for `cases()`.
pub(super) const CASES: [Case; 2] = [
    Case {
        name: "convert-vhdx-1g-xfs-reflink",
        about: "on XFS with reflink (loop file, root): the half-allocated 1 GiB VHDX of \
                convert-vhdx-dynamic-1g converted to raw, durable; vhdkit clones the payload",
        prepare: prepare_vhdx,
    },
    Case {
        name: "convert-vhd-1g-xfs-reflink",
        about: "on XFS with reflink (loop file, root): that VHDX made a VHD by vhdkit \
                (4 KiB-aligned blocks), converted to raw, durable; vhdkit clones the payload",
        prepare: prepare_vhd,
    },
];

fn prepare_vhdx(cfg: &Config, dir: &Path) -> Res<Prepared> {
    prepare_xfs(cfg, dir, "vhdx")
}

fn prepare_vhd(cfg: &Config, dir: &Path) -> Res<Prepared> {
    prepare_xfs(cfg, dir, "vpc")
}

/// Size of the (sparse) loop file.
const LOOP_BYTES: u64 = 4 << 30;

/// `convert-{vhdx,vhd}-1g-xfs-reflink`: the 1 GiB half-allocated input of
/// `convert-vhdx-dynamic-1g` (VHDX written by qemu-io; for `vpc`, that VHDX converted to a VHD
/// by vhdkit, whose block data is 4 KiB-aligned where qemu's is not), converted to raw on XFS,
/// durable, against `qemu-img convert -t writeback`.
fn prepare_xfs(cfg: &Config, dir: &Path, fmt: &str) -> Res<Prepared> {
    let Some(mnt) = mount_xfs(dir)? else {
        return Ok(Prepared {
            contenders: vec![],
            check: Check::AllClean,
        });
    };
    let mut prep = prepare_convert(
        cfg,
        &mnt,
        "vhdx",
        "in.vhdx",
        "subformat=dynamic,block_size=2M",
    )?;
    if fmt == "vpc" {
        let vhd = mnt.join("in.vhd");
        let _ = fs::remove_file(&vhd);
        run_quiet(
            Command::new(&cfg.vhdkit)
                .args(["convert", "--no-progress", "--to", "vhd"])
                .arg(mnt.join("in.vhdx"))
                .arg(&vhd),
        )?;
        for c in &mut prep.contenders {
            for a in &mut c.argv {
                if a.to_str() == Some("vhdx") {
                    *a = OsString::from("vpc");
                } else if Path::new(a.as_os_str()) == mnt.join("in.vhdx") {
                    *a = vhd.clone().into_os_string();
                }
            }
        }
    }
    shared_extent_evidence(cfg, &prep, &mnt)?;
    Ok(prep)
}

/// The file systems `mount_loop` makes; each is mounted at `dir/<name>`.
pub(super) const LOOP_FILE_SYSTEMS: [&str; 2] = ["xfs", "ext4"];

/// Make and mount the XFS loop file (reflink on) at `dir/xfs`; `None` (after a loud SKIP) when
/// that is not possible here.
pub(super) fn mount_xfs(dir: &Path) -> Res<Option<PathBuf>> {
    let mkfs = ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"];
    mount_loop(dir, "xfs", &mkfs, LOOP_BYTES, false)
}

/// Make a sparse loop file of `bytes` in `dir`, format it with `mkfs` (the file is appended),
/// and mount it at `dir/<name>`; `None` (after a loud SKIP) when that is not possible here.
/// With `direct_io` the loop device reads and writes its file with `O_DIRECT`: the page cache
/// then holds the mounted file system's pages once, not also the loop file's (which halves
/// what a warm-cache case can keep cached).
pub(super) fn mount_loop(
    dir: &Path,
    name: &str,
    mkfs: &[&str],
    bytes: u64,
    direct_io: bool,
) -> Res<Option<PathBuf>> {
    let img = dir.join(format!("{name}.img"));
    let mnt = dir.join(name);
    let skip = |why: &str| {
        eprintln!("SKIP: {name} loop-file case not run: {why}");
        Ok(None)
    };
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        return skip("needs root to mount a loop file");
    }
    // A mount left from an earlier run with --dir: start afresh.
    let _ = Command::new("umount")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status();
    fs::create_dir_all(&mnt).map_err(|e| format!("cannot create {}: {e}", mnt.display()))?;
    let _ = fs::remove_file(&img);
    let made = fs::File::create(&img).and_then(|f| f.set_len(bytes));
    if let Err(e) = made {
        return skip(&format!("cannot make {}: {e}", img.display()));
    }
    let Some((prog, args)) = mkfs.split_first() else {
        return skip("no mkfs command");
    };
    if let Err(e) = run_quiet(Command::new(prog).args(args).arg(&img)) {
        return skip(&format!("{prog}: {e}"));
    }
    let mounted = if direct_io {
        mount_direct(&img, &mnt)
    } else {
        run_quiet(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        )
    };
    if let Err(e) = mounted {
        let _ = fs::remove_file(&img);
        return skip(&format!("mount of the loop file: {e}"));
    }
    watch_and_unmount(&img, &mnt, dir)?;
    Ok(Some(mnt))
}

/// Attach `img` to a loop device with direct I/O and mount it at `mnt`. The device is detached
/// at once: the kernel then frees it when the file system is unmounted (autoclear), as
/// `mount -o loop` does.
fn mount_direct(img: &Path, mnt: &Path) -> Res<()> {
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(img)
        .output()
        .map_err(|e| format!("losetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mounted = run_quiet(Command::new("mount").arg(&dev).arg(mnt));
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    mounted
}

/// Start a process that waits for this one to exit, then unmounts `mnt` and removes `img`,
/// and the scratch folder when it is the bench's temporary one (whose removal by the bench
/// stopped at the mount); the folders of a kept `--dir` are left.
fn watch_and_unmount(img: &Path, mnt: &Path, dir: &Path) -> Res<()> {
    let temp_root = std::env::temp_dir().join(format!("vhdkit-bench-{}", std::process::id()));
    let temp = if dir.starts_with(&temp_root) {
        temp_root
    } else {
        PathBuf::new()
    };
    let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 0.2; done; \
                  umount \"$2\" || exit 1; rm -f \"$3\"; rmdir \"$2\"; \
                  if [ -n \"$4\" ]; then rm -rf -- \"$4\"; fi";
    Command::new("sh")
        .args(["-c", script, "vhdkit-bench-unmount"])
        .arg(std::process::id().to_string())
        .args([mnt, img, temp.as_path()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the unmount watchdog: {e}"))
}

/// Convert once (untimed) with the case's vhdkit command to a probe file and print what
/// `filefrag -v` says about it: shared extents are the clone at work.
fn shared_extent_evidence(cfg: &Config, prep: &Prepared, mnt: &Path) -> Res<()> {
    let Some(c) = prep.contenders.first() else {
        return Ok(());
    };
    let probe = mnt.join("probe.raw");
    let _ = fs::remove_file(&probe);
    let mut argv = c.argv.clone();
    if let Some(last) = argv.last_mut() {
        *last = probe.clone().into_os_string();
    }
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    run_quiet(Command::new(prog).args(args))?;
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(&probe)
        .output()
        .map_err(|e| format!("filefrag: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u64>().is_ok())
        })
        .collect();
    let shared = extents.iter().filter(|l| l.contains("shared")).count();
    eprintln!(
        "[xfs-reflink] filefrag -v of {} output: {shared} of {} extents shared{}",
        cfg.vhdkit.display(),
        extents.len(),
        if shared == 0 { " -- NOT CLONED" } else { "" }
    );
    for l in extents.iter().take(3) {
        eprintln!("[xfs-reflink]   {}", l.trim());
    }
    let _ = fs::remove_file(&probe);
    Ok(())
}
