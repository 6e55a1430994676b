//! `vhdkit serve` against `qemu-nbd` (issue 13): real NBD clients (`nbdcopy`, `nbdinfo` from
//! libnbd) run against each server started by socket activation (`[ SERVER ... ]`), so the
//! wall time includes the server's start.
//!
//! - `nbdcopy-depth8-1g`: `nbdcopy` of a depth-8 VHDX chain (1 GiB virtual, every other 2 MiB
//!   block written, spread over the 8 layers) to `null:` through `vhdkit serve`, against
//!   `qemu-nbd -f raw` serving the same contents as one sparse raw file. The table's ratio is
//!   vhdkit's time over qemu-nbd's: 1/ratio is vhdkit's share of qemu-nbd's throughput.
//! - `nbdinfo-map-vhdx-64t`: `nbdinfo --map` over an empty 64 TiB VHDX (qemu-img's default 64
//!   MiB blocks), against `qemu-nbd -f vhdx` on the same file. libnbd before 1.20 has no
//!   64-bit requests: it asks for at most 4 GiB per block status request, 16384 round trips
//!   for 64 TiB whatever the server answers.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::{disk_bytes, run_quiet, Case, Check, Config, Contender, Prepared, Res, Tool};

/// `nbdcopy` through a depth-8 chain vs qemu-nbd on the same contents as raw.
pub(crate) fn nbdcopy_depth8() -> Case {
    Case {
        name: "nbdcopy-depth8-1g",
        about: "nbdcopy to null: through vhdkit serve of a depth-8 VHDX chain (1 GiB, every \
                other 2 MiB block written, spread over the layers) vs through qemu-nbd -f raw \
                of the same contents as a sparse raw file (target: ratio <= 1.25, i.e. >= 80% \
                of qemu-nbd's throughput)",
        prepare: prepare_nbdcopy,
    }
}

/// `nbdinfo --map` over an empty 64 TiB VHDX, server start included.
pub(crate) fn nbdinfo_map_64t() -> Case {
    Case {
        name: "nbdinfo-map-vhdx-64t",
        about: "nbdinfo --map through vhdkit serve vs through qemu-nbd -f vhdx of an empty \
                64 TiB VHDX made with qemu-img's defaults, server start included \
                (target: vhdkit median < 100 ms)",
        prepare: prepare_map,
    }
}

/// `CLIENT ARGS -- [ SERVER... ] TAIL`: the client runs the server by socket activation.
fn client(client: &str, args: &[&str], server: Vec<OsString>, tail: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![client.into()];
    v.extend(args.iter().map(OsString::from));
    v.extend(["--", "["].map(OsString::from));
    v.extend(server);
    v.push("]".into());
    v.extend(tail.iter().map(OsString::from));
    v
}

fn contender(tool: Tool, argv: Vec<OsString>) -> Contender {
    Contender {
        tool,
        argv,
        output: None,
        restore: None,
    }
}

fn prepare_nbdcopy(cfg: &Config, dir: &Path) -> Res<Prepared> {
    let top = super::sync_cases::make_chain(dir, "deep", 8, disk_bytes(cfg))?;
    let raw = dir.join("deep.raw");
    let _ = std::fs::remove_file(&raw);
    run_quiet(
        Command::new(&cfg.vhdkit)
            .args(["convert", "--no-progress", "--no-sync", "--to", "raw"])
            .arg(&top)
            .arg(&raw),
    )?;
    let vhdkit = vec![cfg.vhdkit.clone().into(), "serve".into(), top.into()];
    let qemu = vec![
        "qemu-nbd".into(),
        "-r".into(),
        "-f".into(),
        "raw".into(),
        raw.into(),
    ];
    Ok(Prepared {
        contenders: vec![
            contender(Tool::Vhdkit, client("nbdcopy", &[], vhdkit, &["null:"])),
            contender(Tool::QemuNbd, client("nbdcopy", &[], qemu, &["null:"])),
        ],
        check: Check::AllClean,
    })
}

fn prepare_map(cfg: &Config, dir: &Path) -> Res<Prepared> {
    let big = dir.join("big.vhdx");
    let _ = std::fs::remove_file(&big);
    run_quiet(
        Command::new(&cfg.qemu_img)
            .args(["create", "-q", "-f", "vhdx"])
            .arg(&big)
            .arg("64T"),
    )?;
    let vhdkit = vec![
        cfg.vhdkit.clone().into(),
        "serve".into(),
        big.clone().into(),
    ];
    let qemu = vec![
        "qemu-nbd".into(),
        "-r".into(),
        "-f".into(),
        "vhdx".into(),
        big.into(),
    ];
    Ok(Prepared {
        contenders: vec![
            contender(Tool::Vhdkit, client("nbdinfo", &["--map"], vhdkit, &[])),
            contender(Tool::QemuNbd, client("nbdinfo", &["--map"], qemu, &[])),
        ],
        check: Check::AllClean,
    })
}
