//! `ChainOptions::confine` against a racing attacker: a folder on the way to a parent candidate
//! is swapped for a link to outside over and over while parents are resolved. The check of the
//! real path and the open are two steps; the open resolves the path again beneath the confining
//! folder (`openat2` with `RESOLVE_BENEATH`), so a swap between them is refused, never followed.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::{renameat_with, RenameFlags, CWD};
use vhdkit::{Chain, ChainOptions};
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

const PARENT_ID: [u8; 16] = *b"confined-parent!";
const SIZE: u64 = 4 << 20;

#[test]
fn a_folder_swapped_for_a_link_to_outside_never_leads_the_open_out() {
    let d = tempfile::tempdir().unwrap();
    let inside = d.path().join("inside");
    let outside = d.path().join("outside");
    let vm = inside.join("vm");
    std::fs::create_dir_all(vm.join("sub")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    // Outside: the parent the child names. Inside, at the same name: another disk, so the
    // candidate exists (its real path checks out) and is then rejected by identity.
    VhdBuilder::dynamic(SIZE)
        .unique_id(PARENT_ID)
        .build()
        .write_to(&outside.join("base.vhd"));
    VhdBuilder::dynamic(SIZE)
        .unique_id(*b"an-inside-decoy!")
        .build()
        .write_to(&vm.join("sub/base.vhd"));
    let child = vm.join("child.vhd");
    VhdBuilder::differencing(SIZE, PARENT_ID)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(".\\sub\\base.vhd"))
        .build()
        .write_to(&child);
    let (sub, alt) = (vm.join("sub"), vm.join("alt"));
    std::os::unix::fs::symlink(&outside, &alt).unwrap();
    // Unconfined, swapped: the parent outside is found, so a confined success is an escape.
    renameat_with(CWD, &sub, CWD, &alt, RenameFlags::EXCHANGE).unwrap();
    Chain::open(&child, &ChainOptions::default()).unwrap();
    renameat_with(CWD, &sub, CWD, &alt, RenameFlags::EXCHANGE).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, sub, alt) = (Arc::clone(&stop), sub.clone(), alt.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &sub, CWD, &alt, RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let opts = ChainOptions::default().confine(&inside);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..3000 {
        let report = Chain::inspect(&child, &opts).unwrap();
        let res = report.links[0].parent.as_ref().unwrap();
        assert!(res.path.is_none(), "escaped confinement: {res:?}");
        let first = &res.tried[0].outcome;
        let key = first
            .to_string()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        *outcomes.entry(key).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{swaps} swaps; first-candidate outcomes: {outcomes:?}");
    assert!(swaps > 100, "the racer barely ran: {swaps}");
}
