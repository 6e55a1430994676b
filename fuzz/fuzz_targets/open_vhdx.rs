//! Open VHDX bytes with the fuzzing limits (`Limits::fuzzing()`; this includes the in-memory
//! log replay of a dirty file); on success call `info()` and read a bounded sample spread across
//! the view (`common::read_sampled_view`), checking the `allocation()` contract on the way.
//!
//! The input is the file, or a sparse description of it (`vhdkitSP`, see `common::Sparse`:
//! every VHDX seed is written that way by `fuzz/seed.sh`, since its regions lie 1-4 MiB into the
//! file). Inputs that do not detect as VHDX are rejected from the corpus.
//!
//! Seeds: `fuzz/seed.sh`. Run: `fuzz/run-ci.sh` (flags), or `cargo fuzz run open_vhdx`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::{Disk, DiskFormat};

fuzz_target!(|data: &[u8]| -> Corpus {
    let image = common::Image::from_input(data, false);
    if !matches!(vhdkit::disk::detect(&image), Ok(DiskFormat::Vhdx)) {
        return Corpus::Reject;
    }
    let Ok(disk) = Disk::from_source(Box::new(image), &common::tight_options()) else {
        return Corpus::Keep;
    };
    let info = disk.info();
    assert_eq!(info.format, DiskFormat::Vhdx);
    assert_eq!(info.virtual_size, disk.virtual_size());
    let _ = format!("{info:?}");
    common::read_sampled_view(&disk.view());
    Corpus::Keep
});
