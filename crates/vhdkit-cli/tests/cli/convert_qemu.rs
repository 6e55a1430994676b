//! `vhdkit convert --to raw` on images made by qemu-img and filled by qemu-io must equal
//! `qemu-img convert -O raw` byte for byte, and be sparse.

use vhdkit_testkit::snapshot::Snapshot;

use crate::util::*;

/// Writes that start and end at odd sectors, cross block boundaries and leave holes.
const PATTERNS: &[&str] = &[
    "write -P 0xab 0 1M",
    "write -P 0xcd 3M 512",
    "write -P 0x11 5242880 2560",
    "write -P 0x22 2095616 8192",
    "write -P 0x33 31M 3M",
    "write -P 0x44 63M 1M",
];

fn check(fmt: &str, opts: &str, size: &str) {
    if !have_tool("qemu-img", "qemu round-trip") || !have_tool("qemu-io", "qemu round-trip") {
        return;
    }
    let d = tmp();
    let ext = if fmt == "vpc" { "vhd" } else { "vhdx" };
    let img = p(d.path(), &format!("disk.{ext}"));
    qemu_create(fmt, opts, &img, size);
    qemu_io(fmt, &img, PATTERNS);
    let want = p(d.path(), "qemu.raw");
    qemu_to_raw(fmt, &img, &want);
    let got = p(d.path(), "vhdkit.raw");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        img.as_os_str(),
        got.as_os_str(),
    ]);
    assert_eq!(
        std::fs::metadata(&got).unwrap().len(),
        std::fs::metadata(&want).unwrap().len(),
        "{fmt} {opts}: raw sizes differ"
    );
    assert_eq!(
        sha256_file(&got),
        sha256_file(&want),
        "{fmt} {opts}: contents differ"
    );
    let written: u64 = 1 << 20 | 512 | 2560 | 8192;
    assert!(
        allocated_bytes(&got) < 16 << 20,
        "{fmt} {opts}: output not sparse ({} bytes allocated, about {written} of data)",
        allocated_bytes(&got)
    );
}

#[test]
fn vhd_dynamic() {
    check("vpc", "subformat=dynamic", "64M");
}

#[test]
fn vhd_dynamic_exact_size() {
    check("vpc", "subformat=dynamic,force_size=on", "67108864");
}

#[test]
fn vhd_fixed() {
    check("vpc", "subformat=fixed", "64M");
}

#[test]
fn vhd_fixed_exact_size() {
    check("vpc", "subformat=fixed,force_size=on", "67108864");
}

#[test]
fn vhdx_dynamic_1m_blocks() {
    check("vhdx", "subformat=dynamic,block_size=1M", "64M");
}

#[test]
fn vhdx_dynamic_8m_blocks() {
    check("vhdx", "subformat=dynamic,block_size=8M", "64M");
}

#[test]
fn vhdx_dynamic_32m_blocks_no_zero_state() {
    check(
        "vhdx",
        "subformat=dynamic,block_size=32M,block_state_zero=off",
        "64M",
    );
}

#[test]
fn vhdx_fixed() {
    check("vhdx", "subformat=fixed,block_size=2M", "64M");
}

#[test]
fn refuses_to_overwrite_without_force() {
    if !have_tool("qemu-img", "convert overwrite refusal") {
        return;
    }
    let d = tmp();
    let img = p(d.path(), "d.vhd");
    qemu_create("vpc", "subformat=dynamic", &img, "8M");
    let out = p(d.path(), "out.raw");
    std::fs::write(&out, b"keep me").unwrap();
    let before = Snapshot::tree(d.path());
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        img.as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{r:?}");
    before.assert_unchanged("convert over an existing file");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        "--force".as_ref(),
        img.as_os_str(),
        out.as_os_str(),
    ]);
    let info = run_success(["info".as_ref(), "--json".as_ref(), img.as_os_str()]).json();
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        info["virtual_size"].as_u64().unwrap()
    );
}

#[test]
fn refuses_to_overwrite_its_own_source() {
    if !have_tool("qemu-img", "convert self-overwrite refusal") {
        return;
    }
    let d = tmp();
    let img = p(d.path(), "d.vhd");
    qemu_create("vpc", "subformat=dynamic", &img, "8M");
    let before = Snapshot::tree(d.path());
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        "--force".as_ref(),
        img.as_os_str(),
        img.as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    before.assert_unchanged("convert onto its own source");
}
