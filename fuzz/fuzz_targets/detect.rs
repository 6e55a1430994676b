//! `vhdkit::disk::detect` (feature `test-support`) on arbitrary bytes: a format or an
//! error, never a panic.
//!
//! Seeds: `fuzz/seed.sh` (both formats). Run: `cargo fuzz run -s none detect`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let v: Vec<u8> = data.to_vec();
    let _ = vhdkit::disk::detect(&v);
});
