//! `vhdkit::check::check_source` on arbitrary bytes: it must never panic, must finish in
//! bounded time and memory, and must return only registered codes. When the reader opens the
//! input, check must not claim the file lacks a footer or headers it just read.
//!
//! Seeds: the open_vhd and open_vhdx corpora (`fuzz/seed.sh`). Run:
//! `cargo fuzz run -s none check -- -max_len=4194304`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::check::{check_source, CheckOptions, CODES};
use vhdkit::{ChainOptions, Disk};

fuzz_target!(|data: &[u8]| -> Corpus {
    let v = data.to_vec();
    let opts = CheckOptions::default()
        .chain_options(ChainOptions::new().open_options(common::tight_options()));
    let (format, findings) = check_source(&v, &opts);
    for f in &findings {
        // Every code is registered, with the severity the finding carries.
        let registered = CODES.iter().find(|c| c.0 == f.code);
        assert!(registered.is_some(), "unregistered code {}", f.code);
        assert_eq!(Some(f.severity), registered.map(|c| c.1));
        assert!(!f.message.contains('\n'));
    }
    if format.is_none() {
        return Corpus::Reject;
    }
    if Disk::from_source(Box::new(v), &common::tight_options()).is_ok() {
        for f in &findings {
            assert!(
                !matches!(
                    f.code,
                    "vhd.file.too_small" | "vhdx.header.none_valid" | "vhdx.region.none_valid"
                ),
                "reader opened a file that check calls unopenable: {f:?}"
            );
        }
    }
    Corpus::Keep
});
