//! `vhdkit::check::check_source` on arbitrary bytes: it must never panic, must finish in
//! bounded time and memory, and must return only registered codes. When check calls the file
//! unopenable (no footer, no valid header or region table), the reader must refuse it too.
//!
//! The input is the file, or a sparse description of it (`vhdkitSP`, see `common::Sparse`).
//! The reader runs only when check reports one of those findings: the property needs nothing
//! else, and parsing every input twice halved the rate.
//!
//! Seeds: the open_vhd and open_vhdx corpora (`fuzz/seed.sh`). Run: `fuzz/run-ci.sh` (flags),
//! or `cargo fuzz run check`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::check::{check_source, CheckOptions, CODES};
use vhdkit::{ChainOptions, Disk};

/// Codes saying the reader cannot open the file at all.
const UNOPENABLE: [&str; 3] = [
    "vhd.file.too_small",
    "vhdx.header.none_valid",
    "vhdx.region.none_valid",
];

fuzz_target!(|data: &[u8]| -> Corpus {
    let image = common::Image::from_input(data, false);
    let opts = CheckOptions::default()
        .chain_options(ChainOptions::new().open_options(common::tight_options()));
    let (format, findings) = check_source(&image, &opts);
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
    if let Some(f) = findings.iter().find(|f| UNOPENABLE.contains(&f.code)) {
        assert!(
            Disk::from_source(Box::new(image), &common::tight_options()).is_err(),
            "reader opened a file that check calls unopenable: {f:?}"
        );
    }
    Corpus::Keep
});
