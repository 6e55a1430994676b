//! `merge-1g`: `vhdkit merge` of a 1 GiB differencing child with 512 MiB allocated (every other
//! 2 MiB block, random data) into its 1 GiB dynamic parent, against `cp` of a 512 MiB file on
//! the same file system followed by `sync` of the copy (merge makes its writes durable, so the
//! copy pays for that too). The second contender's row is labelled `qemu-img` by the table; it
//! runs `cp`. The merged parent must hold what the child read before (`qemu-img compare` with a
//! raw read-back made by `vhdkit convert` before the runs, and `qemu-img check` for VHDX).
//! `--smoke`: a 16 MiB disk.
//!
//! qemu cannot write into a differencing disk made by vhdkit (its VHD driver puts new blocks over
//! the `W2ru` locator vhdkit places after the BAT; its VHDX driver refuses differencing disks),
//! so the child's blocks are added here: appended at the end of the file (VHD: bitmap all ones,
//! footer moved past them; VHDX: 1 MiB-aligned, FULLY_PRESENT), with the BAT entry written in
//! place, at the offsets `vhdkit info --json` reports. The child's log is empty (LogGuid zero),
//! so writing its BAT directly is a valid change.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{disk_bytes, run_quiet, Check, Config, Contender, Prepared, Res, Tool, MIB};

const BLOCK: u64 = 2 * MIB;

/// The case for `fmt` (qemu's name: `vhdx` or `vpc`).
pub fn prepare(cfg: &Config, dir: &Path, fmt: &'static str) -> Res<Prepared> {
    let ext = if fmt == "vhdx" { "vhdx" } else { "vhd" };
    let child_ext = if fmt == "vhdx" { "avhdx" } else { "vhd" };
    let pristine = dir.join("pristine");
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&pristine);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&pristine).map_err(|e| e.to_string())?;
    let base = pristine.join(format!("base.{ext}"));
    let child = pristine.join(format!("child.{child_ext}"));
    let vhdkit = |args: &[&str]| {
        let mut c = Command::new(&cfg.vhdkit);
        c.args(args);
        c
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let size = disk_bytes(cfg);
    let size_arg = format!("{}M", size / MIB);
    run_quiet(
        vhdkit(&[
            "create",
            "--size",
            &size_arg,
            "--block-size",
            "2M",
            &s(&base),
        ])
        .arg("-q"),
    )?;
    // The parent: a pattern in every fourth 2 MiB block from block 1 (odd blocks: the child
    // covers the even ones, so the merged disk holds data of both).
    let mut io = Command::new(&cfg.qemu_io);
    io.args(["-f", fmt]);
    for (i, off) in (BLOCK..size).step_by(4 * BLOCK as usize).enumerate() {
        io.arg("-c")
            .arg(format!("write -P {:#x} {off} {BLOCK}", i % 250 + 1));
    }
    run_quiet(io.arg(&base))?;
    run_quiet(&mut vhdkit(&[
        "create",
        "-q",
        "--parent",
        &s(&base),
        &s(&child),
    ]))?;
    let info = info_json(cfg, &child)?;
    let blocks: Vec<u64> = (0..size / BLOCK).step_by(2).collect();
    if fmt == "vhdx" {
        add_vhdx_blocks(&child, &info, &blocks)?;
    } else {
        add_vhd_blocks(&child, &info, &blocks)?;
    }
    let after = info_json(cfg, &child)?;
    if after["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
        return Err(format!("the child has warnings: {}", after["warnings"]));
    }
    run_quiet(&mut vhdkit(&["check", "-q", "--chain", &s(&child)]))?;
    // What the merged parent must hold.
    let want = dir.join("want.raw");
    let _ = fs::remove_file(&want);
    run_quiet(&mut vhdkit(&[
        "convert",
        "-q",
        "--to",
        "raw",
        &s(&child),
        &s(&want),
    ]))?;
    // `cp`'s input: as much random data as the child holds (512 MiB).
    let src = dir.join("cp-src.raw");
    random_file(&src, size / 2)?;
    let dst = dir.join("cp-dst.raw");
    let work_child = work.join(format!("child.{child_ext}"));
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    a.extend(["merge", "--no-progress"].map(OsString::from));
    a.push(work_child.into());
    let script = format!(
        "rm -f '{d}' && cp --reflink=never '{s}' '{d}' && sync '{d}'",
        s = s(&src),
        d = s(&dst)
    );
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: a,
                output: Some(work.join(format!("base.{ext}"))),
                restore: Some((pristine, work)),
            },
            Contender {
                tool: Tool::QemuImg,
                argv: ["sh", "-c", &script].map(OsString::from).to_vec(),
                output: None,
                restore: None,
            },
        ],
        check: Check::SameImage {
            fmt,
            qemu_img: cfg.qemu_img.clone(),
            raw: want,
        },
    })
}

/// `merge-1g-vhdx-xfs-reflink`: the same case on an XFS loop file with reflink (root only;
/// a loud SKIP otherwise), where merge clones the child's payload into the parent; the `cp`
/// contender copies (`--reflink=never`), as a merge without cloning would.
pub fn prepare_xfs(cfg: &Config, dir: &Path, fmt: &'static str) -> Res<Prepared> {
    match super::clone_case::mount_xfs(dir)? {
        Some(mnt) => prepare(cfg, &mnt, fmt),
        None => Ok(Prepared {
            contenders: vec![],
            check: Check::AllClean,
        }),
    }
}

fn info_json(cfg: &Config, p: &Path) -> Res<Value> {
    let o = Command::new(&cfg.vhdkit)
        .args(["info", "--json"])
        .arg(p)
        .output()
        .map_err(|e| format!("cannot run vhdkit info: {e}"))?;
    serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("vhdkit info --json {}: {e}", p.display()))
}

fn num(v: &Value, what: &str) -> Res<u64> {
    v.as_u64()
        .ok_or_else(|| format!("vhdkit info --json: no {what}"))
}

/// One 2 MiB block of xorshift data seeded by `seed` (never all zeros).
fn block_data(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

fn random_file(p: &Path, len: u64) -> Res<()> {
    if fs::metadata(p).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let mut f = File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut buf = vec![0u8; BLOCK as usize];
    for i in 0..len / BLOCK {
        block_data(i + 7, &mut buf);
        f.write_all(&buf)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// VHD: each block appended where the end footer is (bitmap all ones, data 4 KiB-aligned), its
/// BAT entry set (big-endian sector number), the footer written again at the new end.
fn add_vhd_blocks(child: &Path, info: &Value, blocks: &[u64]) -> Res<()> {
    let dynh = &info["dynamic"];
    let bat = num(&dynh["table_offset"], "VHD table_offset")?;
    if num(&dynh["block_size"], "VHD block_size")? != BLOCK {
        return Err("the child's block size is not 2 MiB".into());
    }
    let bitmap = num(&dynh["bitmap_bytes"], "VHD bitmap_bytes")?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(child)
        .map_err(|e| e.to_string())?;
    let len = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let mut footer = vec![0u8; 512];
    f.read_exact_at(&mut footer, len - 512)
        .map_err(|e| e.to_string())?;
    // The first bitmap goes where the footer is, moved on so the data is 4 KiB-aligned.
    let mut end = len - 512;
    let mut data = vec![0u8; BLOCK as usize];
    let ones = vec![0xFFu8; bitmap as usize];
    for &b in blocks {
        let at = (end + bitmap).div_ceil(4096) * 4096 - bitmap;
        block_data(b + 1000, &mut data);
        f.write_all_at(&ones, at).map_err(|e| e.to_string())?;
        f.write_all_at(&data, at + bitmap)
            .map_err(|e| e.to_string())?;
        let sector = u32::try_from(at / 512).map_err(|e| e.to_string())?;
        f.write_all_at(&sector.to_be_bytes(), bat + 4 * b)
            .map_err(|e| e.to_string())?;
        end = at + bitmap + BLOCK;
    }
    f.write_all_at(&footer, end).map_err(|e| e.to_string())?;
    f.set_len(end + 512).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

/// VHDX: each block appended 1 MiB-aligned at the end, FULLY_PRESENT (state 6) in the BAT (one
/// sector-bitmap entry after every chunk-ratio payload entries).
fn add_vhdx_blocks(child: &Path, info: &Value, blocks: &[u64]) -> Res<()> {
    let bat = info["region_tables"][0]["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == "bat"))
        .map(|e| num(&e["offset"], "VHDX BAT offset"))
        .ok_or("vhdkit info --json: no BAT region")??;
    let block = num(&info["block_size"], "VHDX block_size")?;
    let sector = num(&info["logical_sector_size"], "VHDX logical_sector_size")?;
    if block != BLOCK {
        return Err(format!("the child's block size is {block}, not 2 MiB"));
    }
    let chunk_ratio = (1u64 << 23) * sector / block;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(child)
        .map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut at = len.div_ceil(MIB) * MIB;
    let mut data = vec![0u8; BLOCK as usize];
    for &b in blocks {
        block_data(b + 1000, &mut data);
        f.write_all_at(&data, at).map_err(|e| e.to_string())?;
        let entry = at | 6;
        let index = b + b / chunk_ratio;
        f.write_all_at(&entry.to_le_bytes(), bat + 8 * index)
            .map_err(|e| e.to_string())?;
        at += BLOCK;
    }
    f.sync_all().map_err(|e| e.to_string())
}
