//! The whole workflow on disks vhdkit made itself: create a base and a differencing child with
//! `vhdkit create` / `convert`, write data into the child through the library, move the base,
//! `vhdkit reparent` the child to the moved copy, and read the same virtual disk before and
//! after, by vhdkit and by libvhdi.

use std::io::{Seek, SeekFrom, Write};

use vhdkit_testkit::oracle::pyvhdi_chain_sha256;
use vhdkit_testkit::Rng;

use crate::util::*;

const MIB: usize = 1 << 20;

fn roundtrip(ext: &str) {
    let d = tmp();
    let lab = d.path().join("lab");
    let vm = lab.join("vm1");
    std::fs::create_dir_all(&vm).unwrap();
    // Base: a raw image with data, converted by vhdkit.
    let mut rng = Rng::new(42);
    let mut data = vec![0u8; 16 * MIB];
    for i in (0..16).step_by(3) {
        rng.fill(&mut data[i * MIB..i * MIB + 64 * 1024]);
    }
    let raw = d.path().join("base.raw");
    std::fs::write(&raw, &data).unwrap();
    let base = lab.join(format!("base.{ext}"));
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        ext.as_ref(),
        raw.as_os_str(),
        base.as_os_str(),
    ]);
    // Child: created by vhdkit over the base, written through the library (4 KiB-aligned
    // writes so libvhdi's VHD bitmap bug cannot matter).
    let child = vm.join(format!(
        "disk.{}",
        if ext == "vhd" { "avhd" } else { "avhdx" }
    ));
    run_success([
        "create".as_ref(),
        child.as_os_str(),
        "--parent".as_ref(),
        base.as_os_str(),
    ]);
    {
        let mut w = vhdkit::WritableDisk::open(&child, &vhdkit::ChainOptions::default()).unwrap();
        for _ in 0..40 {
            let off = rng.below(16 * 256) * 4096;
            let len = (1 + rng.below(16)) as usize * 4096;
            let len = len.min(16 * MIB - off as usize);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf);
            w.seek(SeekFrom::Start(off)).unwrap();
            w.write_all(&buf).unwrap();
        }
        w.close().unwrap();
    }
    let before = virtual_sha(&child);
    if let Some((h, _)) = pyvhdi_chain_sha256(&[&child, &base]) {
        assert_eq!(h, before, "libvhdi disagrees before reparent");
    }
    // Move the base to a shared folder, as an admin consolidating copies would.
    let shared = d.path().join("RefDisk");
    std::fs::create_dir(&shared).unwrap();
    let moved = shared.join(format!("base.{ext}"));
    std::fs::rename(&base, &moved).unwrap();
    let r = run(["chain".as_ref(), child.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    run_success([
        "reparent".as_ref(),
        child.as_os_str(),
        "--parent".as_ref(),
        moved.as_os_str(),
    ]);
    let r = run_success(["chain".as_ref(), "--json".as_ref(), child.as_os_str()]);
    let j = r.json();
    assert_eq!(j["intact"], true, "{}", r.stdout);
    let via = j["links"][0]["parent"]["via"].as_str().unwrap();
    assert!(via == "W2ru" || via == "relative_path", "found via {via}");
    assert_eq!(virtual_sha(&child), before, "virtual contents changed");
    if let Some((h, _)) = pyvhdi_chain_sha256(&[&child, &moved]) {
        assert_eq!(h, before, "libvhdi disagrees after reparent");
    }
}

#[test]
fn vhd_made_by_vhdkit_round_trips_through_reparent() {
    roundtrip("vhd");
}

#[test]
fn vhdx_made_by_vhdkit_round_trips_through_reparent() {
    roundtrip("vhdx");
}
