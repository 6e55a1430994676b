//! Metadata commands (issue 18 point 5): `vhdkit info` and `vhdkit check` against
//! `qemu-img info` / `qemu-img check` on empty sparse disks at the formats' size limits, where
//! the only work is the block allocation table (a 64 TiB VHDX, a 2040 GiB VHD).
//!
//! `check-vhdx-64t` and `check-vhd-2040g` (in `main.rs`) use 256 MiB VHDX blocks (a 2.2 MiB
//! table); the `-qemu-default` cases keep qemu-img's own choice for 64 TiB (64 MiB blocks, an
//! 8 MiB table), the disk the issue measured.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::{run_quiet, Case, Check, Config, Contender, Prepared, Res, Tool};

/// A sparse disk of `size` made by `qemu-img create -f fmt -o opts` (empty `opts`: qemu's
/// defaults), and `vhdkit ARGS FILE` against `qemu-img QEMU_ARGS FILE`; both must exit 0.
#[allow(clippy::too_many_arguments)]
fn prepare(
    cfg: &Config,
    dir: &Path,
    fmt: &str,
    name: &str,
    opts: &str,
    size: &str,
    vhdkit_args: &[&str],
    qemu_args: &[&str],
) -> Res<Prepared> {
    let src = dir.join(name);
    let _ = std::fs::remove_file(&src);
    let mut create = Command::new(&cfg.qemu_img);
    create.args(["create", "-q", "-f", fmt]);
    if !opts.is_empty() {
        create.args(["-o", opts]);
    }
    run_quiet(create.arg(&src).arg(size))?;
    let argv = |program: &Path, args: &[&str]| {
        let mut v: Vec<OsString> = vec![program.into()];
        v.extend(args.iter().map(OsString::from));
        v.push(src.clone().into());
        v
    };
    let contender = |tool, argv| Contender {
        tool,
        argv,
        output: None,
        restore: None,
    };
    Ok(Prepared {
        contenders: vec![
            contender(Tool::Vhdkit, argv(&cfg.vhdkit, vhdkit_args)),
            contender(Tool::QemuImg, argv(&cfg.qemu_img, qemu_args)),
        ],
        check: Check::AllClean,
    })
}

/// `vhdkit info` vs `qemu-img info` on an empty 64 TiB VHDX with 256 MiB blocks.
pub(super) fn info_vhdx_64t() -> Case {
    Case {
        name: "info-vhdx-64t",
        about:
            "vhdkit info vs qemu-img info -f vhdx on an empty 64 TiB sparse VHDX (256 MiB blocks)",
        prepare: |cfg, dir| {
            let q = ["info", "-f", "vhdx"];
            prepare(
                cfg,
                dir,
                "vhdx",
                "big.vhdx",
                "block_size=256M",
                "64T",
                &["info"],
                &q,
            )
        },
    }
}

/// `vhdkit info` vs `qemu-img info` on an empty 2040 GiB dynamic VHD.
pub(super) fn info_vhd_2040g() -> Case {
    Case {
        name: "info-vhd-2040g",
        about: "vhdkit info vs qemu-img info -f vpc on an empty 2040 GiB dynamic VHD",
        prepare: |cfg, dir| {
            let o = "subformat=dynamic,force_size=on";
            let q = ["info", "-f", "vpc"];
            prepare(cfg, dir, "vpc", "big.vhd", o, "2040G", &["info"], &q)
        },
    }
}

/// `vhdkit info` vs `qemu-img info` on an empty 64 TiB VHDX with qemu's default blocks.
pub(super) fn info_vhdx_64t_qemu_default() -> Case {
    Case {
        name: "info-vhdx-64t-qemu-default",
        about: "vhdkit info vs qemu-img info -f vhdx on an empty 64 TiB sparse VHDX made with \
                qemu-img's defaults (64 MiB blocks, 8 MiB table)",
        prepare: |cfg, dir| {
            let q = ["info", "-f", "vhdx"];
            prepare(cfg, dir, "vhdx", "big.vhdx", "", "64T", &["info"], &q)
        },
    }
}

/// `vhdkit check` vs `qemu-img check` on an empty 64 TiB VHDX with qemu's default blocks.
pub(super) fn check_vhdx_64t_qemu_default() -> Case {
    Case {
        name: "check-vhdx-64t-qemu-default",
        about: "vhdkit check vs qemu-img check -f vhdx on an empty 64 TiB sparse VHDX made with \
                qemu-img's defaults (64 MiB blocks, 8 MiB table)",
        prepare: |cfg, dir| {
            let q = ["check", "-f", "vhdx"];
            prepare(cfg, dir, "vhdx", "big.vhdx", "", "64T", &["check"], &q)
        },
    }
}
