//! Peak memory (RSS, measured by `/usr/bin/time -v`) of every command stays at or under 64 MiB
//! on disks at the formats' size limits (2040 GiB VHD, 64 TiB VHDX; sparse files), and a
//! table the readers would refuse is refused by `create` at a few MiB, with no file made.

use std::path::Path;
use std::process::Command;

use crate::hostile::skip;

const BOUND_KIB: u64 = 64 << 10;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `vhdkit ARGS` under `/usr/bin/time -v`: (exit code, peak RSS in KiB, stderr). Output
/// of `time` that cannot be parsed is a failure, never a skip.
fn measured(args: &[&str]) -> (i32, u64, String) {
    let o = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let rss = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{args:?}: no peak RSS in /usr/bin/time output:\n{err}"));
    (o.status.code().unwrap_or(-1), rss, err)
}

fn within_bound(args: &[&str], want_code: i32) {
    let (code, rss, err) = measured(args);
    assert_eq!(code, want_code, "{args:?}: {err}");
    assert!(
        rss <= BOUND_KIB,
        "{args:?}: peak RSS {rss} KiB > {BOUND_KIB} KiB"
    );
    println!("{args:?}: {rss} KiB");
}

fn have_time() -> bool {
    let ok = Path::new("/usr/bin/time").exists();
    if !ok {
        skip("/usr/bin/time is not installed (apt-get install time)");
    }
    ok
}

#[test]
fn every_command_stays_under_64_mib_at_the_size_limits() {
    if !have_time() {
        return;
    }
    let dir = crate::util::tmp();
    // A 64 TiB VHDX child needs 32 MiB blocks: with the default 2 MiB its table would be
    // 256 MiB, which no reader loads (create refuses it, see the next test).
    for (ext, size, child_bs) in [("vhd", "2040G", "2M"), ("vhdx", "64T", "32M")] {
        let d = dir.path().join(ext);
        let (vms, shared) = (d.join("vms"), d.join("shared"));
        for sub in ["vm1", "vm2"] {
            std::fs::create_dir_all(vms.join(sub)).unwrap();
        }
        std::fs::create_dir_all(&shared).unwrap();
        let base1 = vms.join(format!("vm1/base.{ext}"));
        let base2 = vms.join(format!("vm2/base.{ext}"));
        let child1 = vms.join(format!("vm1/child.{ext}"));
        let child2 = vms.join(format!("vm2/child.{ext}"));
        within_bound(&["create", s(&base1), "--size", size], 0);
        std::fs::copy(&base1, &base2).unwrap();
        for (c, b) in [(&child1, &base1), (&child2, &base2)] {
            within_bound(
                &["create", s(c), "--parent", s(b), "--block-size", child_bs],
                0,
            );
        }
        within_bound(&["info", s(&child1)], 0);
        within_bound(&["info", "--json", s(&base1)], 0);
        within_bound(&["chain", s(&child1)], 0);
        within_bound(&["check", "--chain", s(&child1)], 0);
        within_bound(&["check", s(&vms)], 0);
        within_bound(&["reparent", s(&child1), "--parent", s(&base2)], 0);
        within_bound(&["share", s(&vms), "--into", s(&shared)], 0);
    }
}

#[test]
fn tables_the_readers_refuse_are_refused_by_create_at_a_few_mib() {
    if !have_time() {
        return;
    }
    let dir = crate::util::tmp();
    for (name, size, bs) in [
        ("a.vhdx", "64T", "1M"),
        ("b.vhd", "2040G", "512"),
        ("c.vhdx", "64T", "2M"),
        ("d.vhd", "2040G", "2K"),
    ] {
        let p = dir.path().join(name);
        let (code, rss, err) = measured(&["create", s(&p), "--size", size, "--block-size", bs]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("block allocation table"), "{name}: {err}");
        assert!(rss <= 16 << 10, "{name}: peak RSS {rss} KiB");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{name}: a file was left"
        );
    }
}

/// A dirty VHDX whose active sequence fills a 64 MiB log with data descriptors (16,000
/// sectors, 62.5 MiB to replay; built here, never committed) is read, checked and replayed to
/// the file well under the bound: the log is streamed in small chunks and the logged sectors
/// are read where they lie, never gathered in memory.
#[test]
fn a_64_mib_dirty_log_is_replayed_in_a_few_mib() {
    use vhdkit_testkit::vhdx::{Kind, LogOptions, VhdxBuilder};
    const MIB: u64 = 1 << 20;
    const SECTORS: u64 = 16_000;
    if !have_time() {
        return;
    }
    let dir = crate::util::tmp();
    let mut built = VhdxBuilder::new(Kind::Dynamic, 64 * MIB, MIB as u32, 512).build();
    // The log moves past the end of the file and grows to 64 MiB; the logged sectors follow.
    let (log, log_len) = ((built.bytes.len() as u64).next_multiple_of(MIB), 64 * MIB);
    let targets = (log + log_len) as usize;
    built.bytes.resize(targets + (SECTORS * 4096) as usize, 0);
    for (i, b) in built.bytes[targets..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let want = built.bytes[targets..].to_vec();
    for h in [0x10000usize, 0x20000] {
        built.bytes[h + 68..h + 72].copy_from_slice(&(log_len as u32).to_le_bytes());
        built.bytes[h + 72..h + 80].copy_from_slice(&log.to_le_bytes());
    }
    (built.layout.log_offset, built.layout.log_length) = (log, log_len);
    let sectors: Vec<u64> = (0..SECTORS).map(|i| targets as u64 + i * 4096).collect();
    // Overwrites the targets with 0xEE; only a replay brings the pattern back.
    built.make_dirty(&sectors, &[], &LogOptions::default());
    let p = dir.path().join("dirty.vhdx");
    std::fs::write(&p, &built.bytes).unwrap();
    drop(built);
    let bound = 16 << 10;
    for (args, code) in [
        (["info", s(&p)], 0),
        (["check", s(&p)], 1),
        (["repair", s(&p)], 0),
    ] {
        let (got, rss, err) = measured(&args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(rss <= bound, "{args:?}: peak RSS {rss} KiB > {bound} KiB");
        println!("{args:?}: {rss} KiB");
    }
    let after = std::fs::read(&p).unwrap();
    assert!(
        after[targets..] == want[..],
        "repair did not replay the log"
    );
}
