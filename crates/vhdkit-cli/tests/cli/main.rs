//! Integration tests that drive the real `vhdkit` binary on real files.

mod util;

mod convert_qemu;
mod errors;
