//! `share` timed against reading the same copies once (`cat`): the lab of issue 15. VM folders,
//! each with its own copy of an 8 GiB dynamic VHDX parent (32 MiB blocks, Hyper-V's default)
//! holding 768 MiB of data, and a differencing child over each copy; `share --delete-copies`
//! must prove the copies identical at about the speed of reading them.
//!
//! Both commands start from the same page-cache state: `share` runs on a fresh `cp -a` of the
//! pristine tree, read once after the copy (as the pristine files were, by the copy), and `cat`
//! reads the pristine copies, which are the same bytes (it changes nothing, so it needs no
//! restore, and the last run of every round leaves a shared tree for the check). `--cold`
//! (root) drops the page cache before each command. The `-ext4` variants run on a journaled
//! ext4 loop file (see `prepare_seed_ext4`). `--smoke`: one block of data per copy (32 MiB),
//! so that the ten copies and their working copies fit in a little free space.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{run_quiet, Check, Config, Contender, Prepared, Res, Tool, GIB, MIB};

/// Block size of the parent.
const BLOCK: u64 = 32 * MIB;
/// Blocks written: 768 MiB of data, one block in every ten.
const DATA_BLOCKS: u64 = 24;

/// Blocks written for `cfg`: `DATA_BLOCKS`, or one for `--smoke`.
fn data_blocks(cfg: &Config) -> u64 {
    if cfg.smoke {
        1
    } else {
        DATA_BLOCKS
    }
}

/// `prepare_seed` on a journaled ext4 loop file at `dir/ext4` (mkfs.ext4's defaults: a journal,
/// no online discard; the loop device uses direct I/O, so the copies are cached once). The
/// machine's own file system may delete synchronously: a journal-less ext4 mounted with
/// `discard` sends each deleted file's discards to the device inside `unlink` (seen in the
/// kernel stack: `ext4_free_blocks` -> `blkdev_issue_discard`), which times the device, not
/// `share`.
pub(crate) fn prepare_seed_ext4(cfg: &Config, dir: &Path, copies: usize) -> Res<Prepared> {
    // Room for the pristine tree and one working copy of it (sparse: only what is written
    // takes space).
    let bytes = (copies as u64 + 1).saturating_mul(2 * GIB);
    let mkfs = ["mkfs.ext4", "-q", "-F"];
    let Some(mnt) = crate::clone_case::mount_loop(dir, "ext4", &mkfs, bytes, true)? else {
        return Ok(Prepared {
            contenders: vec![],
            check: Check::AllClean,
        });
    };
    prepare_seed(cfg, &mnt, copies)
}

/// `pristine/VM{n}/base.vhdx` (`copies` copies of one parent) with `disk.avhdx` over each.
pub(crate) fn prepare_seed(cfg: &Config, dir: &Path, copies: usize) -> Res<Prepared> {
    let pristine = dir.join("pristine");
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&pristine);
    let _ = fs::remove_dir_all(&work);
    let base = dir.join("base.vhdx");
    let _ = fs::remove_file(&base);
    run_quiet(
        Command::new(&cfg.qemu_img)
            .args(["create", "-q", "-f", "vhdx", "-o"])
            .arg(format!("subformat=dynamic,block_size={BLOCK}"))
            .arg(&base)
            .arg((8 * GIB).to_string()),
    )?;
    let mut io = Command::new(&cfg.qemu_io);
    io.args(["-f", "vhdx"]);
    for i in 0..data_blocks(cfg) {
        // A pattern per block: no two blocks alike, none all zeros.
        let pattern = i % 255 + 1;
        io.arg("-c")
            .arg(format!("write -P {pattern:#x} {} {BLOCK}", i * 10 * BLOCK));
    }
    run_quiet(io.arg(&base))?;
    let mut copy_paths: Vec<OsString> = Vec::new();
    for vm in 0..copies {
        let vmdir = pristine.join(format!("VM{vm}"));
        fs::create_dir_all(&vmdir).map_err(|e| format!("{}: {e}", vmdir.display()))?;
        let copy = vmdir.join("base.vhdx");
        fs::copy(&base, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
        run_quiet(
            Command::new(&cfg.vhdkit)
                .args(["create", "-q", "--parent"])
                .arg(&copy)
                .arg(vmdir.join("disk.avhdx")),
        )?;
        copy_paths.push(copy.into());
    }
    let _ = fs::remove_file(&base);
    let into = work.join("Shared");
    let mut share: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    share.extend(["share".into(), work.clone().into(), "--into".into()]);
    share.extend([into.clone().into(), "--delete-copies".into()]);
    let mut cat: Vec<OsString> = vec!["cat".into()];
    cat.extend(copy_paths);
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: share,
                output: None,
                restore: Some((pristine, work.clone())),
            },
            Contender {
                tool: Tool::Cat,
                argv: cat,
                output: None,
                restore: None,
            },
        ],
        check: Check::ShareDone {
            dir: work,
            into,
            parents: 1,
        },
    })
}
