//! `vhdkit resize` through the real binary: grow and shrink of fixed, dynamic and differencing
//! disks of both formats (the contents over the kept range unchanged, zeros after a grow, read
//! by vhdkit and by qemu-img / libvhdi), a grow that moves blocks and locator data out of the
//! BAT's way, `--round-up`, the dry run (nothing written), and refusals (exit 1, one line,
//! every file byte- and mtime-identical). The crash matrix is in `resize/crash.rs`.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::{build_chain, ChainFormat};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::through::{read_chain, read_chain_at};

use crate::util::*;

mod crash;

const MIB: u64 = 1 << 20;

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_fmt(p: &Path) -> &'static str {
    if p.extension().unwrap() == "vhd" {
        "vpc"
    } else {
        "vhdx"
    }
}

/// A standalone disk made by `vhdkit create` (`extra` flags) with data written by qemu-io in
/// its first blocks and its last MiB.
fn standalone(dir: &Path, name: &str, size: u64, extra: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let size_arg = size.to_string();
    let mut args = vec!["create", s(&p), "--size", &size_arg];
    args.extend_from_slice(extra);
    run_success(&args);
    if need_tool("qemu-io", "qemu-io writes the test data") {
        let last = format!("write -P 0x33 {} 1M", size - MIB);
        qemu_io(qemu_fmt(&p), &p, &["write -P 0x5a 4096 3M", &last]);
    }
    p
}

fn virtual_size(p: &Path) -> u64 {
    run_success(["info", "--json", s(p)]).json()["virtual_size"]
        .as_u64()
        .unwrap()
}

/// Grow or shrink `disk` to `new`: the dry run writes nothing and shows the plan; the run
/// keeps the contents over the kept range and reads zeros after it; `check` is clean.
fn resize_round_trip(disk: &Path, new: u64) -> serde_json::Value {
    let dir = disk.parent().unwrap();
    let before = read_chain(disk);
    let snap = Snapshot::tree(dir);
    let new_arg = new.to_string();
    let j = run_success(["resize", "--dry-run", "--json", s(disk), "--size", &new_arg]).json();
    assert_eq!(j["applied"], false, "{j}");
    assert_eq!(j["plan"]["new_size"], new, "{j}");
    assert_eq!(j["plan"]["old_size"], before.len() as u64, "{j}");
    snap.assert_unchanged("dry run");
    let j = run_success(["resize", "--json", s(disk), "--size", &new_arg]).json();
    assert_eq!(j["applied"], true, "{j}");
    assert_eq!(j["report"]["new_size"], new, "{j}");
    assert_eq!(virtual_size(disk), new);
    let after = read_chain(disk);
    assert_eq!(after.len() as u64, new);
    let kept = before.len().min(after.len());
    assert!(
        after[..kept] == before[..kept],
        "contents over the kept range changed"
    );
    assert!(
        after[kept..].iter().all(|&b| b == 0),
        "the grown range is not zero"
    );
    run_success(["check", s(disk)]);
    let sidecar = PathBuf::from(format!("{}.vhdkit-journal", disk.display()));
    assert!(!sidecar.exists(), "journal left");
    // A rerun has nothing to do.
    let r = run_success(["resize", s(disk), "--size", &new_arg]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");
    if need_tool("qemu-img", "qemu-img oracle for resized standalone disks")
        && !j["plan"]["disk_type"]
            .as_str()
            .unwrap()
            .contains("differencing")
    {
        let raw = dir.join("expect.raw");
        let mut want = before[..kept].to_vec();
        want.resize(new as usize, 0);
        std::fs::write(&raw, &want).unwrap();
        let fmt = qemu_fmt(disk);
        run_ok(std::process::Command::new("qemu-img").args([
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            fmt,
            s(&raw),
            s(disk),
        ]));
        if fmt == "vhdx" {
            run_ok(std::process::Command::new("qemu-img").args(["check", "-f", fmt, s(disk)]));
        }
        std::fs::remove_file(&raw).unwrap();
    }
    j
}

#[test]
fn grow_and_shrink_standalone_disks() {
    let d = tmp();
    for (name, extra) in [
        ("dyn.vhd", &["--format", "vhd"][..]),
        ("fixed.vhd", &["--format", "vhd", "--fixed"][..]),
        ("dyn.vhdx", &[][..]),
        ("fixed.vhdx", &["--fixed"][..]),
    ] {
        let p = standalone(d.path(), name, 8 * MIB, extra);
        resize_round_trip(&p, 40 * MIB);
        // Back down: the data at 7 MiB is past 6 MiB in a fixed disk (refused below), so the
        // shrink goes to just past the data there.
        if !name.starts_with("fixed") {
            let r = run(["resize", s(&p), "--size", "6M"]);
            assert_eq!(r.code, 1, "{name}: {r:?}");
            // A whole block past the end, or the cut part of the block the end splits.
            assert!(
                r.stderr.contains("allocated past the new end")
                    || r.stderr.contains("does not read as zero"),
                "{name}: {r:?}"
            );
            assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
        }
    }
}

#[test]
fn shrink_keeps_what_is_left() {
    let d = tmp();
    for (name, extra) in [("dyn.vhd", &["--format", "vhd"][..]), ("dyn.vhdx", &[][..])] {
        let p = d.path().join(name);
        run_success(["create", s(&p), "--size", "64M", "--block-size", "1M"]);
        if !extra.is_empty() {
            std::fs::remove_file(&p).unwrap();
            run_success([
                "create",
                s(&p),
                "--size",
                "64M",
                "--block-size",
                "1M",
                "--format",
                "vhd",
            ]);
        }
        if !need_tool("qemu-io", "qemu-io writes the test data") {
            return;
        }
        qemu_io(
            qemu_fmt(&p),
            &p,
            &["write -P 0x5a 0 3M", "write -P 0 3M 1M"],
        );
        resize_round_trip(&p, 5 * MIB);
    }
}

#[test]
fn fixed_vhd_shrink_needs_a_zero_tail() {
    let d = tmp();
    let p = standalone(
        d.path(),
        "fixed.vhd",
        8 * MIB,
        &["--format", "vhd", "--fixed"],
    );
    let snap = Snapshot::tree(d.path());
    let r = run(["resize", s(&p), "--size", "7M", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["kind"], "refused", "{r:?}");
    assert!(r.stderr.contains("does not read as zero"), "{r:?}");
    snap.assert_unchanged("refused shrink");
    // Data ends at 4 KiB + 3 MiB; the last MiB holds data too: clear it, then shrink.
    qemu_io("vpc", &p, &["write -z 7M 1M"]);
    resize_round_trip(&p, 5 * MIB);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 5 * MIB + 512);
}

/// Write `data` at `at` through the library's writer (qemu ignores VHD parents).
fn write(p: &Path, at: u64, data: &[u8]) {
    let mut w = vhdkit::WritableDisk::open(p, &vhdkit::ChainOptions::default()).unwrap();
    w.write_at(at, data).unwrap();
    w.close().unwrap();
}

/// libvhdi's SHA-256 of the first `limit` bytes of `chain[0]` (parents attached) and its
/// media size: it cannot read past a parent's end, so a grown child is compared over its old
/// range (the zeros after it are read by vhdkit).
fn pyvhdi_prefix(chain: &[&Path], limit: u64) -> Option<(String, u64)> {
    if !vhdkit_testkit::have_python_module("pyvhdi", "libvhdi oracle") {
        return None;
    }
    let py = "import sys, os, hashlib, pyvhdi\n\
        hs = []\n\
        for p in sys.argv[2:]:\n    f = pyvhdi.file(); f.open(p); hs.append(f)\n\
        for c, p in zip(hs, hs[1:]): c.set_parent(p)\n\
        t = hs[0]; h = hashlib.sha256(); left = int(sys.argv[1]); t.seek_offset(0, os.SEEK_SET)\n\
        while left:\n    b = t.read_buffer(min(1 << 20, left)); h.update(b); left -= len(b)\n\
        print(h.hexdigest(), t.media_size)\n";
    let out = run_ok(
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", py, &limit.to_string()])
            .args(chain),
    );
    let mut it = out.split_whitespace();
    Some((it.next()?.to_string(), it.next()?.parse().ok()?))
}

/// A grow past what the BAT holds (64 KiB blocks: the 4 KiB BAT holds 64 MiB): the first data
/// blocks (dynamic) and the locator data after the BAT (differencing, as Windows lays it out)
/// are moved, the contents stay.
#[test]
fn vhd_grow_moves_what_is_in_the_bat_s_way() {
    let d = tmp();
    let base = d.path().join("base.vhd");
    let bs = ["--block-size", "64K", "--format", "vhd"];
    run_success([&["create", s(&base), "--size", "4M"][..], &bs].concat());
    write(&base, 0, &[0x5a; 300_000]);
    write(&base, 3 * MIB, &[0x11; 70_000]);
    let child = d.path().join("child.vhd");
    // 4 KiB blocks: the grown BAT (128 KiB) reaches past the W2ru data into the blocks.
    let small = ["--block-size", "4K", "--format", "vhd"];
    run_success([&["create", s(&child), "--parent", s(&base)][..], &small].concat());
    write(&child, 100_000, &[0x77; 100_000]);
    let old = read_chain(&child);
    let libvhdi_before = pyvhdi_prefix(&[&child, &base], old.len() as u64);
    // The child first (the base has a child until it is removed below).
    let j = resize_round_trip(&child, 128 * MIB);
    let what: Vec<&str> = j["plan"]["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["what"].as_str().unwrap())
        .collect();
    assert!(what.iter().any(|w| w.starts_with("block")), "{j}");
    assert!(what.iter().any(|w| w.contains("W2ru")), "{j}");
    assert_eq!(
        j["report"]["bytes_moved"],
        j["plan"]["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["length"].as_u64().unwrap())
            .sum::<u64>()
    );
    // libvhdi misreads a sector of a partial VHD block (ORACLES.md): it must read the same
    // after the resize as before.
    if let Some((sha, size)) = pyvhdi_prefix(&[&child, &base], old.len() as u64) {
        assert_eq!(
            size,
            4 * MIB,
            "libvhdi's size of a VHD is its original size"
        );
        assert_eq!(
            Some(sha),
            libvhdi_before.map(|b| b.0),
            "libvhdi reads another disk"
        );
    }
    run_success(["chain", s(&child)]);
    std::fs::remove_file(&child).unwrap();
    let j = resize_round_trip(&base, 128 * MIB);
    assert!(!j["plan"]["moves"].as_array().unwrap().is_empty(), "{j}");
}

/// A VHDX grow past what its 1 MiB BAT region holds (1 MiB blocks: 128 GiB): the table moves
/// whole to a new region at the end, the old one is left unused; the contents stay, the grown
/// range reads as zeros and takes writes (by qemu and by vhdkit), and qemu-img and vhdkit check
/// the result clean. A differencing child grows the same way.
#[test]
fn vhdx_grow_moves_the_bat_region() {
    let d = tmp();
    const BIG: u64 = 200 << 30;
    let base = standalone(d.path(), "base.vhdx", 8 * MIB, &["--block-size", "1M"]);
    let child = d.path().join("child.vhdx");
    run_success([
        "create",
        s(&child),
        "--parent",
        s(&base),
        "--block-size",
        "1M",
    ]);
    write(&child, 5 * MIB - 512, &[0x66; 4096]);
    for disk in [&child, &base] {
        let before = read_chain(disk);
        let snap = Snapshot::tree(d.path());
        let size = BIG.to_string();
        let dry = run_success(["resize", "--dry-run", "--json", s(disk), "--size", &size]).json();
        snap.assert_unchanged("dry run");
        let moves = dry["plan"]["moves"].as_array().unwrap();
        assert_eq!(moves.len(), 1, "{dry}");
        assert_eq!(moves[0]["what"], "BAT region", "{dry}");
        let old_len = std::fs::metadata(disk).unwrap().len();
        assert!(moves[0]["to"].as_u64().unwrap() >= old_len - MIB, "{dry}");
        let j = run_success(["resize", "--json", s(disk), "--size", &size]).json();
        // 204,800 entries and the bitmap entries: a 2 MiB region.
        assert_eq!(j["report"]["bytes_moved"], 2 * MIB, "{j}");
        let n = before.len();
        let at = [0, n as u64, 128 << 30, BIG - MIB];
        let (got, reads) = read_chain_at(disk, &at, n);
        assert_eq!(got, BIG);
        assert!(reads[0] == before, "{}: contents changed", disk.display());
        assert!(reads[1..].iter().flatten().all(|&b| b == 0), "grown range");
        run_success(["check", s(disk)]);
        let r = run_success(["resize", s(disk), "--size", &size]);
        assert!(r.stdout.contains("nothing to do"), "{r:?}");
        if disk == &child {
            std::fs::remove_file(&child).unwrap();
        }
    }
    // The grown base takes writes past the old table's reach, from qemu and from vhdkit.
    write(&base, 150 << 30, &[0x99; 8192]);
    let (_, r) = read_chain_at(&base, &[150 << 30], 8192);
    assert!(r[0].iter().all(|&b| b == 0x99));
    if need_tool("qemu-io", "qemu-io writes into the grown VHDX") {
        qemu_io("vhdx", &base, &["write -P 0x3c 199G 1M"]);
        let (_, r) = read_chain_at(&base, &[199 << 30], MIB as usize);
        assert!(r[0].iter().all(|&b| b == 0x3c), "qemu's write");
        let out = std::process::Command::new("qemu-io")
            .args([
                "-f",
                "vhdx",
                "-c",
                "read -P 0x99 150G 8K",
                "-c",
                "read -P 0x5a 4096 3M",
            ])
            .arg(&base)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("Pattern verification failed"),
            "{text}"
        );
        run_ok(std::process::Command::new("qemu-img").args(["check", "-f", "vhdx", s(&base)]));
    }
    run_success(["check", s(&base)]);
}

/// Bytes past the virtual end inside the last block (left by another tool's shrink, or written
/// there by a writer that fills whole blocks) must not show after a grow: the grown range reads
/// as zeros. A 7 MiB disk in 2 MiB blocks, its last block allocated, garbage written into that
/// block past 7 MiB (and, for the VHD, its sectors marked present); a dynamic VHD, a dynamic and
/// a fixed VHDX.
#[test]
fn stale_bytes_past_the_old_end_read_as_zeros_after_a_grow() {
    for (name, extra) in [
        ("dyn.vhd", &["--format", "vhd"][..]),
        ("dyn.vhdx", &[][..]),
        ("fixed.vhdx", &["--fixed"][..]),
    ] {
        let d = tmp();
        let p = d.path().join(name);
        let args = [
            &["create", s(&p), "--size", "7M", "--block-size", "2M"][..],
            extra,
        ];
        run_success(args.concat());
        write(&p, 6 * MIB, &[0x5a; 4096]);
        let disk = vhdkit::Disk::open(&p).unwrap();
        let (extent, _) = disk.map(6 * MIB, 4096).unwrap();
        let vhdkit::Extent::Data { file_offset } = extent else {
            panic!("{name}: block 3 is not stored: {extent:?}");
        };
        drop(disk);
        let mut bytes = std::fs::read(&p).unwrap();
        let stale = (file_offset + MIB) as usize;
        bytes[stale..stale + MIB as usize].fill(0xee);
        if name.ends_with(".vhd") {
            // The block's sector bitmap (512 bytes before its data): every sector present.
            bytes[file_offset as usize - 512..file_offset as usize].fill(0xff);
        }
        std::fs::write(&p, &bytes).unwrap();
        let before = read_chain(&p);
        assert_eq!(before.len() as u64, 7 * MIB);
        let j = run_success(["resize", "--json", s(&p), "--size", "16M"]).json();
        assert_eq!(j["applied"], true, "{j}");
        let after = read_chain(&p);
        assert!(after[..before.len()] == before[..], "{name}: kept range");
        let first = after[before.len()..].iter().position(|&b| b != 0);
        assert_eq!(first, None, "{name}: stale bytes show past the old end");
        run_success(["check", s(&p)]);
        if need_tool("qemu-img", "qemu-img oracle for the grown disk") {
            let raw = d.path().join("want.raw");
            std::fs::write(&raw, &after).unwrap();
            run_ok(std::process::Command::new("qemu-img").args([
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                qemu_fmt(&p),
                s(&raw),
                s(&p),
            ]));
        }
    }
}

/// The same when the block the old end splits is one of those the grown BAT moves out of its
/// way: the zeros go to the block's new place. A VHD of 4 MiB + 2 KiB in 4 KiB blocks whose last
/// block is allocated first (so it lies right after the BAT), grown to 128 MiB.
#[test]
fn stale_bytes_in_a_moved_vhd_block_read_as_zeros_after_a_grow() {
    let d = tmp();
    let p = d.path().join("odd.vhd");
    let size = (4 * MIB + 2048).to_string();
    run_success([
        "create",
        s(&p),
        "--size",
        &size,
        "--block-size",
        "4K",
        "--format",
        "vhd",
    ]);
    write(&p, 4 * MIB, &[0x5a; 2048]);
    write(&p, 0, &[0x11; 8192]);
    let disk = vhdkit::Disk::open(&p).unwrap();
    let (extent, _) = disk.map(4 * MIB, 2048).unwrap();
    let vhdkit::Extent::Data { file_offset } = extent else {
        panic!("the last block is not stored: {extent:?}");
    };
    drop(disk);
    let mut bytes = std::fs::read(&p).unwrap();
    let at = file_offset as usize;
    bytes[at + 2048..at + 4096].fill(0xee);
    bytes[at - 512] = 0xff; // the block's 8 sectors all present
    std::fs::write(&p, &bytes).unwrap();
    let before = read_chain(&p);
    let j = run_success(["resize", "--json", s(&p), "--size", "128M"]).json();
    let moved = j["plan"]["moves"].as_array().unwrap();
    assert!(
        moved
            .iter()
            .any(|m| m["from"].as_u64() == Some(file_offset - 512)),
        "the last block should move: {j}"
    );
    let after = read_chain(&p);
    assert!(after[..before.len()] == before[..], "kept range");
    let first = after[before.len()..].iter().position(|&b| b != 0);
    assert_eq!(first, None, "stale bytes show past the old end");
    run_success(["check", s(&p)]);
}

#[test]
fn differencing_chains_grow() {
    for format in [
        ChainFormat::Vhd,
        ChainFormat::Vhdx(512),
        ChainFormat::Vhdx(4096),
    ] {
        let d = tmp();
        let c = build_chain(d.path(), format, 4 * MIB, 2, 7);
        let leaf = c.leaf().to_path_buf();
        let files: Vec<&Path> = c.files.iter().rev().map(PathBuf::as_path).collect();
        let check_libvhdi = format != ChainFormat::Vhdx(4096);
        // libvhdi misreads some partial VHD blocks (ORACLES.md): what it reads must not change.
        let libvhdi_before = check_libvhdi
            .then(|| pyvhdi_prefix(&files, 4 * MIB))
            .flatten();
        resize_round_trip(&leaf, 20 * MIB);
        let kept = vhdkit_testkit::sha256(&read_chain(&leaf)[..4 * MIB as usize]);
        if check_libvhdi {
            // libvhdi has no 4096-byte VHDX sectors in its Debian build.
            if let Some((sha, size)) = pyvhdi_prefix(&files, 4 * MIB) {
                assert_eq!(
                    Some(&sha),
                    libvhdi_before.as_ref().map(|b| &b.0),
                    "{format:?}"
                );
                // libvhdi gives a VHD the footer's original size (kept, as the spec says:
                // only the current size changes), a VHDX its virtual size.
                let want = if format == ChainFormat::Vhd {
                    4 * MIB
                } else {
                    20 * MIB
                };
                assert_eq!(size, want, "{format:?}");
                if format != ChainFormat::Vhd {
                    assert_eq!(sha, kept, "{format:?}: libvhdi reads another disk");
                }
            }
        }
        // Its parent has a child: refused, nothing written.
        let snap = Snapshot::tree(d.path());
        let r = run(["resize", "--json", s(&c.files[1]), "--size", "20M"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.json()["kind"], "refused", "{r:?}");
        assert!(r.stderr.contains("is a child of this disk"), "{r:?}");
        assert!(
            r.stderr.contains(s(leaf.file_name().unwrap().as_ref())),
            "{r:?}"
        );
        snap.assert_unchanged("parent with a child");
    }
}

#[test]
fn a_child_found_through_search_is_a_refusal() {
    let d = tmp();
    let vm = d.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    let c = build_chain(&vm, ChainFormat::Vhdx(512), 4 * MIB, 1, 9);
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let other = elsewhere.join("other.avhdx");
    run_success(["create", s(&other), "--parent", s(&c.files[0])]);
    std::fs::remove_file(c.leaf()).unwrap();
    // Not seen without --search (the base's folder has no child now)...
    run_success(["resize", "--dry-run", s(&c.files[0]), "--size", "8M"]);
    // ...seen with it.
    let snap = Snapshot::tree(d.path());
    for dry in [false, true] {
        let mut a = vec![
            "resize",
            s(&c.files[0]),
            "--size",
            "8M",
            "--search",
            s(&elsewhere),
        ];
        if dry {
            a.push("--dry-run");
        }
        let r = run(&a);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("other.avhdx"), "{r:?}");
    }
    snap.assert_unchanged("child found through --search");
}

#[test]
fn round_up_and_bad_sizes() {
    let d = tmp();
    let p = d.path().join("a.vhd");
    run_success(["create", s(&p), "--size", "8M", "--format", "vhd"]);
    let j = run_success([
        "resize",
        "--json",
        "--dry-run",
        s(&p),
        "--size",
        "10000000",
        "--round-up",
        "1M",
    ])
    .json();
    assert_eq!(j["plan"]["new_size"], 10 * MIB, "{j}");
    let snap = Snapshot::tree(d.path());
    for bad in [
        &["--size", "1000"][..],
        &["--size", "3000T"][..],
        &["--size", "8M", "--round-up", "0"][..],
    ] {
        let mut a = vec!["resize", s(&p)];
        a.extend_from_slice(bad);
        let r = run(&a);
        assert_eq!(r.code, 1, "{bad:?}: {r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    }
    snap.assert_unchanged("bad sizes");
    // A locked disk: exit 1, kind locked.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.try_lock().unwrap();
    let r = run(["resize", "--json", s(&p), "--size", "16M"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["kind"], "locked", "{r:?}");
    drop(f);
    snap.assert_unchanged("locked");
}

/// `convert --to vhd --fixed --round-up 1M`: a fixed VHD of a whole number of MiB (what Azure
/// accepts) from a disk of another size, its contents then zeros, sparse on disk.
#[test]
fn convert_rounds_a_fixed_vhd_up_to_whole_mib() {
    let d = tmp();
    let src = d.path().join("src.vhdx");
    run_success(["create", s(&src), "--size", "10000384"]);
    write(&src, 4096, &[0x5a; 70_000]);
    let dst = d.path().join("azure.vhd");
    let r = run_success([
        "convert",
        "--to",
        "vhd",
        "--fixed",
        "--round-up",
        "1M",
        "--json",
        s(&src),
        s(&dst),
    ]);
    assert_eq!(r.json()["stats"]["virtual_size"], 10 * MIB, "{r:?}");
    assert_eq!(virtual_size(&dst), 10 * MIB);
    let want = read_chain(&src);
    let got = read_chain(&dst);
    assert!(got[..want.len()] == want[..] && got[want.len()..].iter().all(|&b| b == 0));
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 10 * MIB + 512);
    // The added range costs nothing on disk: as much is allocated as without --round-up.
    let plain = d.path().join("plain.vhd");
    run_success(["convert", "--to", "vhd", "--fixed", s(&src), s(&plain)]);
    assert!(
        allocated_bytes(&dst) <= allocated_bytes(&plain) && allocated_bytes(&dst) < 5 * MIB,
        "not sparse: {} (without --round-up {})",
        allocated_bytes(&dst),
        allocated_bytes(&plain)
    );
    run_success(["check", s(&dst)]);
    if need_tool("qemu-img", "qemu-img oracle for the rounded fixed VHD") {
        let raw = d.path().join("want.raw");
        let mut w = want.clone();
        w.resize(10 * MIB as usize, 0);
        std::fs::write(&raw, &w).unwrap();
        run_ok(std::process::Command::new("qemu-img").args([
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "vpc",
            s(&raw),
            s(&dst),
        ]));
    }
    // A bad multiple is a usage error, nothing written.
    let r = run([
        "convert",
        "--to",
        "vhd",
        "--round-up",
        "0",
        s(&src),
        s(&d.path().join("x.vhd")),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!d.path().join("x.vhd").exists());
}
