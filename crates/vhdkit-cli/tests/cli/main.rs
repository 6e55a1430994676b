//! Integration tests that drive the real `vhdkit` binary on real files.

// Tests fail by panicking; the no-panic lints are for the library and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

mod chains;
mod check;
mod cli_contract;
mod clone_xfs;
mod compact;
mod concurrent_writers;
mod confine;
mod confine_side_files;
mod convert_qemu;
mod convert_sync;
mod create_convert_vhd;
mod create_convert_vhdx;
mod errors;
mod flatten;
mod foreign_writers;
mod full_fs;
mod hostile;
mod hostile_side_files;
mod install;
mod lying_input;
mod map;
mod memory_bound;
mod merge;
mod merge_basic;
mod partial_trees;
mod readme;
mod real_images;
mod repair_dry_run;
mod reparent;
mod reparent_vhdx;
mod resize;
mod roundtrip;
mod serve;
mod serve_clients;
mod serve_kill;
mod share;
mod shared_storage;
mod stdout_errors;
mod sticky_folders;
