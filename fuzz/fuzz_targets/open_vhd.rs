//! Open VHD bytes with tight limits; on success call `info()` and read the whole view (skipping
//! zero ranges, capped at 64 MiB of data), checking the `allocation()` contract on the way.
//!
//! Inputs that do not detect as VHD are rejected from the corpus. When an input starts with a
//! footer copy but lost its trailing footer to a mutation, the head copy is appended, so dynamic
//! headers and BATs stay reachable.
//!
//! Seeds: `fuzz/seed.sh`. Run: `cargo fuzz run -s none open_vhd -- -max_len=4194304`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::{Disk, DiskFormat};

fuzz_target!(|data: &[u8]| -> Corpus {
    let v = common::with_vhd_footer(data);
    if !matches!(vhdkit::disk::detect(&v), Ok(DiskFormat::Vhd)) {
        return Corpus::Reject;
    }
    let Ok(disk) = Disk::from_source(Box::new(v), &common::tight_options()) else {
        return Corpus::Keep;
    };
    let info = disk.info();
    assert_eq!(info.format, DiskFormat::Vhd);
    assert_eq!(info.virtual_size, disk.virtual_size());
    let _ = format!("{info:?}");
    let view = disk.view();
    common::read_whole_view(&view);
    Corpus::Keep
});
