//! Structure-aware fuzzing of the VHD redo journal parser and recovery (`txn::journal`).
//!
//! A leftover `<file>.vhdkit-journal` is untrusted input: it may be torn, foreign, or crafted.
//! The input's first byte chooses whether the trailing CRC-32C is fixed up (so the fuzzer gets
//! past the checksum into the records) or left as given; the rest is the journal. The target
//! file is a fixed 64 KiB pattern. `inspect` and `recover` must not panic; after a recovery that
//! rolled forward or removed the journal, a second recovery finds nothing to do; a foreign
//! journal is never applied (the file keeps its bytes).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhdkit::txn::fault::{FaultPlan, FaultyFile, MemJournal};
use vhdkit::txn::journal::{self, JournalStore, Recovery};

/// The target file's 64 KiB pattern, computed once rather than per input.
fn original() -> &'static [u8] {
    static ORIGINAL: OnceLock<Vec<u8>> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut j = body.to_vec();
    if mode & 1 == 1 {
        let crc = crc32c::crc32c(&j);
        j.extend_from_slice(&crc.to_le_bytes());
    }
    let original = original();
    let plan = FaultPlan::new(None);
    let file = FaultyFile::new(original.to_vec(), plan.clone());
    let store = MemJournal::with(j, plan);
    let _ = journal::inspect(&file, &store);
    match journal::recover(&file, &store) {
        Ok(Recovery::Foreign { .. }) => {
            assert!(
                file.contents_all_written() == original,
                "a foreign journal was applied"
            );
            assert!(
                store.load().ok().flatten().is_some(),
                "a foreign journal was removed"
            );
        }
        Ok(Recovery::RolledForward { .. }) | Ok(Recovery::AlreadyComplete) => {
            assert!(
                store.load().ok().flatten().is_none(),
                "journal left after recovery"
            );
            assert!(matches!(
                journal::recover(&file, &store),
                Ok(Recovery::Clean)
            ));
        }
        // Recovery is non-exhaustive: an outcome added later has no property checked here yet.
        Ok(_) | Err(_) => {}
    }
});
