//! Open VHDX bytes with tight limits (this includes the in-memory log replay of a dirty file);
//! on success call `info()` and read the whole view (skipping zero ranges, capped at 64 MiB of
//! data), checking the `allocation()` contract on the way.
//!
//! Inputs without the `vhdxfile` signature are rejected from the corpus.
//!
//! Seeds: `fuzz/seed.sh`. Run: `cargo fuzz run -s none open_vhdx -- -max_len=4194304`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::{Disk, DiskFormat};

fuzz_target!(|data: &[u8]| -> Corpus {
    let v = data.to_vec();
    if !matches!(vhdkit::disk::detect(&v), Ok(DiskFormat::Vhdx)) {
        return Corpus::Reject;
    }
    let Ok(disk) = Disk::from_source(Box::new(v), &common::tight_options()) else {
        return Corpus::Keep;
    };
    let info = disk.info();
    assert_eq!(info.format, DiskFormat::Vhdx);
    assert_eq!(info.virtual_size, disk.virtual_size());
    let _ = format!("{info:?}");
    let view = disk.view();
    common::read_whole_view(&view);
    Corpus::Keep
});
