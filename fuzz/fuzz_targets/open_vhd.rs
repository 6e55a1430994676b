//! Open VHD bytes with the fuzzing limits (`Limits::fuzzing()`); on success call `info()` and
//! read a bounded sample spread across the view (`common::read_sampled_view`), checking the
//! `allocation()` contract on the way.
//!
//! The input is the file, or a sparse description of it (`vhdkitSP`, see `common::Sparse`:
//! `fuzz/seed.sh` writes large seeds that way). Inputs that do not detect as VHD are rejected
//! from the corpus. When a raw input starts with a footer copy but lost its trailing footer to a
//! mutation, the head copy is appended, so dynamic headers and BATs stay reachable.
//!
//! Seeds: `fuzz/seed.sh`. Run: `fuzz/run-ci.sh` (flags), or `cargo fuzz run open_vhd`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::{Disk, DiskFormat};

fuzz_target!(|data: &[u8]| -> Corpus {
    let image = common::Image::from_input(data, true);
    if !matches!(vhdkit::disk::detect(&image), Ok(DiskFormat::Vhd)) {
        return Corpus::Reject;
    }
    let Ok(disk) = Disk::from_source(Box::new(image), &common::tight_options()) else {
        return Corpus::Keep;
    };
    let info = disk.info();
    assert_eq!(info.format, DiskFormat::Vhd);
    assert_eq!(info.virtual_size, disk.virtual_size());
    let _ = format!("{info:?}");
    common::read_sampled_view(&disk.view());
    Corpus::Keep
});
