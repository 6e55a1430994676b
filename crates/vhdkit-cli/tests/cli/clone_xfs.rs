//! Cloned payload: on an XFS file system with reflink (a loop file mounted as root; a loud skip
//! otherwise, a failure with `CI=true`), `convert` of a VHDX and of a VHD to raw, VHD and VHDX
//! lets the file system share the payload's extents, and the output holds exactly what a plain
//! copy (`VHDKIT_NO_CLONE=1`) holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hostile::skip;
use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An XFS file system with reflink on a loop file, unmounted when dropped.
pub(crate) struct Xfs {
    _dir: tempfile::TempDir,
    pub(crate) at: PathBuf,
}

impl Xfs {
    pub(crate) fn mount() -> Option<Xfs> {
        if !need_tool(
            "mkfs.xfs",
            "makes the XFS file system cloning is tested on (xfsprogs)",
        ) {
            return None;
        }
        let dir = tmp();
        let img = dir.path().join("xfs.img");
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        let made = ok(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img));
        if !made
            || !ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&at))
        {
            skip("cannot make and mount an XFS loop file here (needs root, loop devices)");
            return None;
        }
        Some(Xfs { _dir: dir, at })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// `filefrag -v` of `p`: whether any extent is shared.
fn has_shared_extents(p: &Path) -> bool {
    let o = Command::new("filefrag").arg("-v").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout).contains("shared")
}

/// Convert `src` to `to` at `dst`, with cloning on or off; returns the bytes cloned.
fn convert(src: &Path, to: &str, dst: &Path, clone: bool) -> u64 {
    let mut c = vhdkit();
    c.args(["convert", "--json", "--to", to, s(src), s(dst)]);
    if !clone {
        c.env("VHDKIT_NO_CLONE", "1");
    } else {
        c.env_remove("VHDKIT_NO_CLONE");
    }
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    r.json()["stats"]["bytes_cloned"].as_u64().unwrap()
}

/// The cloned and the plain image differ only where each new image differs anyway: a VHD in
/// its footers' unique id, time stamp and checksum; a VHDX below its BAT (headers, log and
/// metadata with their fresh GUIDs; the BAT sits at 3 MiB). Same BAT, same blocks, same places.
fn same_layout(a: &Path, b: &Path, to: &str, what: &str) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let differ: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
    match to {
        "vhd" => assert!(differ.len() <= 48, "{what}: {} bytes differ", differ.len()),
        "vhdx" => assert!(
            differ.iter().all(|&i| i < 3 << 20),
            "{what}: differs at {:#x}",
            differ.iter().find(|&&i| i >= 3 << 20).unwrap()
        ),
        _ => {}
    }
}

#[test]
fn convert_clones_payload_on_xfs_and_matches_a_plain_copy() {
    if !need_tool("qemu-img", "makes the source disks")
        || !need_tool("filefrag", "shows shared extents (e2fsprogs)")
    {
        return;
    }
    let Some(fs) = Xfs::mount() else {
        return;
    };
    let d = fs.at.as_path();
    // A VHDX with whole blocks, a partial block, a block of written zeros and holes.
    let vhdx = p(d, "src.vhdx");
    qemu_create("vhdx", "block_size=1M", &vhdx, "64M");
    qemu_io(
        "vhdx",
        &vhdx,
        &[
            "write -P 0xab 0 4M",
            "write -P 0xcd 9M 3M",
            "write -P 0x11 20M 4k",
            "write -P 0 30M 1M",
            "write -P 0x5e 63M 1M",
        ],
    );
    // A VHD in vhdkit's layout (4 KiB-aligned block data; qemu's is 512-aligned).
    let vhd = p(d, "src.vhd");
    convert(&vhdx, "vhd", &vhd, false);
    let want = p(d, "want.raw");
    qemu_to_raw("vhdx", &vhdx, &want);
    let want_bytes = std::fs::read(&want).unwrap();
    for src in [&vhdx, &vhd] {
        for to in ["raw", "vhdx", "vhd"] {
            let what = format!("{} -> {to}", src.display());
            let cloned = p(d, &format!("cloned.{to}"));
            let plain = p(d, &format!("plain.{to}"));
            assert!(
                convert(src, to, &cloned, true) >= 4 << 20,
                "{what}: too little cloned"
            );
            assert_eq!(convert(src, to, &plain, false), 0, "{what}");
            assert!(has_shared_extents(&cloned), "{what}: no shared extent");
            assert!(!has_shared_extents(&plain), "{what}: the plain copy shares");
            let (c_len, p_len) = (
                std::fs::metadata(&cloned).unwrap().len(),
                std::fs::metadata(&plain).unwrap().len(),
            );
            assert_eq!(c_len, p_len, "{what}: file lengths");
            same_layout(&cloned, &plain, to, &what);
            if to == "raw" {
                assert!(
                    std::fs::read(&cloned).unwrap() == want_bytes,
                    "{what}: bytes"
                );
                assert!(
                    std::fs::read(&plain).unwrap() == want_bytes,
                    "{what}: plain bytes"
                );
            } else {
                if to == "vhdx" {
                    run_ok(
                        Command::new("qemu-img")
                            .args(["check", "-q", "-f", "vhdx"])
                            .arg(&cloned),
                    );
                }
                for out in [&cloned, &plain] {
                    let back = p(d, "back.raw");
                    qemu_to_raw(if to == "vhd" { "vpc" } else { to }, out, &back);
                    assert!(
                        std::fs::read(&back).unwrap() == want_bytes,
                        "{what}: {}",
                        out.display()
                    );
                    std::fs::remove_file(&back).unwrap();
                }
            }
            std::fs::remove_file(&cloned).unwrap();
            std::fs::remove_file(&plain).unwrap();
        }
    }
}
