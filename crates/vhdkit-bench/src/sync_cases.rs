//! Cases of issue 18, points 2-4: durable convert against `qemu-img convert -t writeback`,
//! `convert --no-sync` against qemu-img's default (no flush), and a depth-8 chain against the
//! same contents in one disk (vhdkit against itself).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use vhdkit::{create, ChainOptions, CreateParams, WritableDisk};

use super::{disk_bytes, prepare_convert, Case, Check, Config, Contender, Prepared, Res, Tool};

const MIB: u64 = 1 << 20;

/// Durable VHDX -> raw: the same run as `convert-vhdx-dynamic-1g`, under the name of its
/// target.
pub(crate) fn durable_vhdx() -> Case {
    Case {
        name: "convert-durable-vhdx-1g",
        about: "durable convert (vhdkit's default) of a 1 GiB VHDX, every other 2 MiB block \
                written, to raw vs qemu-img convert -t writeback (target: ratio <= 1.0)",
        prepare: |cfg, dir| {
            prepare_convert(
                cfg,
                dir,
                "vhdx",
                "in.vhdx",
                "subformat=dynamic,block_size=2M",
            )
        },
    }
}

/// Durable VHD -> raw.
pub(crate) fn durable_vhd() -> Case {
    Case {
        name: "convert-durable-vhd-1g",
        about: "durable convert of a 1 GiB dynamic VHD, every other 2 MiB block written, to raw \
                vs qemu-img convert -t writeback (target: ratio <= 1.0)",
        prepare: |cfg, dir| prepare_convert(cfg, dir, "vpc", "in.vhd", "subformat=dynamic"),
    }
}

/// `--no-sync` VHDX -> raw against qemu-img's default convert, which never flushes.
pub(crate) fn nosync_vhdx() -> Case {
    Case {
        name: "convert-nosync-vhdx-1g",
        about: "vhdkit convert --no-sync of the same VHDX vs qemu-img convert's default \
                (cache=unsafe, no flush) (target: ratio <= 0.67)",
        prepare: |cfg, dir| {
            let mut p = prepare_convert(
                cfg,
                dir,
                "vhdx",
                "in.vhdx",
                "subformat=dynamic,block_size=2M",
            )?;
            for c in &mut p.contenders {
                match c.tool {
                    Tool::Vhdkit => c.argv.insert(2, "--no-sync".into()),
                    _ => c.argv.retain(|a| a != "-t" && a != "writeback"),
                }
            }
            Ok(p)
        },
    }
}

/// A depth-8 chain against the same contents in one disk.
pub(crate) fn depth8() -> Case {
    Case {
        name: "convert-depth8-1g",
        about: "vhdkit convert to raw through a depth-8 VHDX chain (1 GiB, every other 2 MiB \
                block written, spread over the 8 layers) vs the same contents in one VHDX \
                (vhdkit vs vhdkit; target: ratio <= 1.25, i.e. >= 80% of depth-1 throughput)",
        prepare: prepare_depth8,
    }
}

fn prepare_depth8(cfg: &Config, dir: &Path) -> Res<Prepared> {
    let size = disk_bytes(cfg);
    let deep = make_chain(dir, "deep", 8, size)?;
    let flat = make_chain(dir, "flat", 1, size)?;
    let mut contenders = vec![];
    for (tool, top) in [(Tool::Vhdkit, deep), (Tool::VhdkitBaseline, flat)] {
        let out = top.with_extension("raw");
        let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
        a.extend(["convert", "--to", "raw"].map(OsString::from));
        a.extend([top.into(), out.clone().into()]);
        contenders.push(Contender {
            tool,
            argv: a,
            output: Some(out),
            restore: None,
        });
    }
    Ok(Prepared {
        contenders,
        check: Check::SameSparseRaw,
    })
}

/// A VHDX chain of `depth` disks of `size` bytes (2 MiB blocks) named `{stem}{level}.vhdx`:
/// every other 2 MiB block holds a byte pattern (as the qemu-io cases write), block `k` of
/// them in layer `k % depth`. Each layer is written before its child is made (a VHDX child
/// records its parent's data write GUID). Returns the top.
pub(crate) fn make_chain(dir: &Path, stem: &str, depth: u64, size: u64) -> Res<PathBuf> {
    let block = 2 * MIB;
    let err = |e: vhdkit::Error| format!("building the {stem} chain: {e}");
    let mut parent: Option<PathBuf> = None;
    for level in 0..depth {
        let path = dir.join(format!("{stem}{level}.vhdx"));
        let _ = fs::remove_file(&path);
        let params = match &parent {
            None => CreateParams::dynamic(size).block_size(2 << 20),
            Some(p) => CreateParams::differencing(p.clone()),
        };
        create(&path, &params).map_err(err)?;
        let mut d = WritableDisk::open(&path, &ChainOptions::default()).map_err(err)?;
        let mut buf = vec![0u8; 2 << 20];
        for (k, off) in (0..size).step_by(2 * block as usize).enumerate() {
            if k as u64 % depth != level {
                continue;
            }
            // Pattern 0x01..=0xff, as `prepare_convert` writes.
            buf.fill(u8::try_from(k % 255 + 1).unwrap_or(1));
            d.write_at(off, &buf).map_err(err)?;
        }
        d.close().map_err(err)?;
        parent = Some(path);
    }
    parent.ok_or_else(|| "a chain needs a disk".to_string())
}
