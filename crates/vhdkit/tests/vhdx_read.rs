//! VHDX reading: real images (shared test data) and images built with the testkit writer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use vhdkit::{Disk, Extent};
use vhdkit_testkit::{real_data_dir, sha256_file, sha256_reader, unpack_real};

fn real(rel: &str, dir: &Path) -> Option<std::path::PathBuf> {
    let real = real_data_dir(rel)?;
    Some(unpack_real(&real, rel, dir))
}

fn check_hash(rel: &str, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(p) = real(rel, tmp.path()) else {
        return;
    };
    let before = sha256_file(&p);
    let disk = Disk::open(&p).unwrap();
    assert_eq!(disk.format(), vhdkit::DiskFormat::Vhdx);
    let got = sha256_reader(disk.view());
    assert_eq!(got, expected, "{rel}");
    assert_eq!(sha256_file(&p), before, "{rel} was modified");
}

#[test]
fn real_fixed() {
    check_hash(
        "dissect.hypervisor/fixed.vhdx.gz",
        "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62",
    );
}

#[test]
fn real_dynamic() {
    check_hash(
        "dissect.hypervisor/dynamic.vhdx.gz",
        "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac",
    );
}

#[test]
fn real_iotest_dynamic() {
    check_hash(
        "qemu-iotests/iotest-dynamic-1G.vhdx.bz2",
        "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478",
    );
}

#[test]
fn real_disk2vhd_identical_headers() {
    check_hash(
        "qemu-iotests/test-disk2vhd.vhdx.bz2",
        "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a",
    );
}

#[test]
fn real_dirty_log_replayed_in_memory() {
    check_hash(
        "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f",
    );
    let tmp = tempfile::tempdir().unwrap();
    let Some(p) = real("qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2", tmp.path()) else {
        return;
    };
    let disk = Disk::open(&p).unwrap();
    let w = disk.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("log replayed in memory (1 entries, seq 7..7)")),
        "{w:?}"
    );
    let vhdkit::disk::FormatInfo::Vhdx(info) = disk.info().details else {
        panic!("not vhdx")
    };
    assert_eq!(info.log.state, vhdkit::vhdx::LogState::ReplayedInMemory);
    assert_eq!(info.log.last_sequence, Some(7));
    assert_eq!(info.bat.fully_present, 18);
    // Block 17 (added by the log) holds 0xa5.
    assert!(matches!(
        disk.map(17 << 20, 1 << 20).unwrap(),
        (Extent::Data { .. }, 0x100000)
    ));
}
