//! `compact-1g-vhdx` (issue 14): `vhdkit compact` of a 1 GiB dynamic VHDX (2 MiB blocks) with
//! 512 MiB allocated, every other virtual block, alternately random data and zeros written as
//! data (so half the allocated blocks are zero and the data blocks of the upper half must move
//! down into the holes), against `cat` of the same file (one read of the allocated bytes). The
//! compacted disk must hold the input's contents (`qemu-img compare` and `qemu-img check`); the
//! check line reports its size, about half the input's. `--smoke`: a 16 MiB disk.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::{disk_bytes, run_quiet, Case, Check, Config, Contender, Prepared, Res, Tool, MIB};

const BLOCK: u64 = 2 * MIB;

/// The case.
pub fn case() -> Case {
    Case {
        name: "compact-1g-vhdx",
        about: "vhdkit compact of a 1 GiB dynamic VHDX with 512 MiB allocated, half of it zeros \
                (the file ends at about half its size), vs cat of the file (the qemu-img row \
                runs cat)",
        prepare,
    }
}

/// `compact-1g-vhdx` on an XFS loop file with reflink (root only; a loud SKIP otherwise), where
/// the blocks that move are cloned (`copy_file_range`), not copied.
pub fn case_xfs() -> Case {
    Case {
        name: "compact-1g-vhdx-xfs-reflink",
        about: "compact-1g-vhdx on XFS with reflink (loop file, root): the moved blocks are \
                cloned, not copied",
        prepare: |cfg, dir| match super::clone_case::mount_xfs(dir)? {
            Some(mnt) => prepare(cfg, &mnt),
            None => Ok(Prepared {
                contenders: vec![],
                check: Check::AllClean,
            }),
        },
    }
}

fn prepare(cfg: &Config, dir: &Path) -> Res<Prepared> {
    let pristine = dir.join("pristine");
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&pristine);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&pristine).map_err(|e| e.to_string())?;
    let disk = pristine.join("disk.vhdx");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let size = disk_bytes(cfg);
    run_quiet(
        Command::new(&cfg.vhdkit)
            .args(["create", "-q", "--block-size", "2M", "--size"])
            .arg(size.to_string())
            .arg(&disk),
    )?;
    // Every other block written, in file order: data, zeros, data, zeros...
    let mut io = Command::new(&cfg.qemu_io);
    io.args(["-f", "vhdx"]);
    for (i, off) in (0..size).step_by(2 * BLOCK as usize).enumerate() {
        let pattern = if i % 2 == 0 { i % 250 + 1 } else { 0 };
        io.arg("-c")
            .arg(format!("write -P {pattern:#x} {off} {BLOCK}"));
    }
    run_quiet(io.arg(&disk))?;
    let want = dir.join("want.raw");
    let _ = fs::remove_file(&want);
    run_quiet(Command::new(&cfg.vhdkit).args([
        "convert",
        "-q",
        "--to",
        "raw",
        &s(&disk),
        &s(&want),
    ]))?;
    let work_disk = work.join("disk.vhdx");
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    a.extend(["compact", "--no-progress"].map(OsString::from));
    a.push(work_disk.clone().into());
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: a,
                output: Some(work_disk),
                restore: Some((pristine, work)),
            },
            Contender {
                tool: Tool::Cat,
                argv: vec!["cat".into(), disk.into()],
                output: None,
                restore: None,
            },
        ],
        check: Check::SameImage {
            fmt: "vhdx",
            qemu_img: cfg.qemu_img.clone(),
            raw: want,
        },
    })
}
