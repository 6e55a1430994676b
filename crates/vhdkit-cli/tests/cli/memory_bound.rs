//! Peak memory (RSS, measured by `/usr/bin/time -v`) of every command stays at or under 64 MiB
//! on disks at the formats' size limits (2040 GiB VHD, 64 TiB VHDX; sparse files), and a
//! table the readers would refuse is refused by `create` at a few MiB, with no file made.

use std::path::{Path, PathBuf};
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

/// The folder `share` is measured on, under `root`: `vms/vm1` and `vms/vm2`, each with a base
/// (`vm1`'s made by `vhdkit create` with `base_args`, measured; `vm2`'s a copy of it), and an
/// empty `shared` to share into. The children are named here; the tests make them.
struct TwoVms {
    vms: PathBuf,
    shared: PathBuf,
    base: [PathBuf; 2],
    child: [PathBuf; 2],
}

fn two_vms(root: &Path, ext: &str, base_args: &[&str]) -> TwoVms {
    let (vms, shared) = (root.join("vms"), root.join("shared"));
    for sub in ["vm1", "vm2"] {
        std::fs::create_dir_all(vms.join(sub)).unwrap();
    }
    std::fs::create_dir_all(&shared).unwrap();
    let in_vm = |vm: &str, name: &str| vms.join(vm).join(format!("{name}.{ext}"));
    let base = [in_vm("vm1", "base"), in_vm("vm2", "base")];
    let child = [in_vm("vm1", "child"), in_vm("vm2", "child")];
    let mut args = vec!["create", s(&base[0])];
    args.extend_from_slice(base_args);
    within_bound(&args, 0);
    std::fs::copy(&base[0], &base[1]).unwrap();
    TwoVms {
        vms,
        shared,
        base,
        child,
    }
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
        let TwoVms {
            vms,
            shared,
            base: [base1, base2],
            child: [child1, child2],
        } = two_vms(&dir.path().join(ext), ext, &["--size", size]);
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

// ---- VHD: the largest table the readers accept, with more blocks than one overlap pass holds.

/// Allocated blocks in the VHD worst case: more than `disjoint`'s budget (512Ki spans), so the
/// overlap check at every open runs in several passes.
const VHD_BLOCKS: u64 = 600_000;

/// Point `n` BAT entries of the VHD at `path` at blocks past its end (holes: a sparse file), in
/// the reverse of table order, and move the end footer after them.
fn vhd_with_blocks(path: &Path, n: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let be32 =
        |b: &[u8], at: usize| u64::from(u32::from_be_bytes(b[at..at + 4].try_into().unwrap()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut footer = [0u8; 512];
    f.seek(SeekFrom::Start(len - 512)).unwrap();
    f.read_exact(&mut footer).unwrap();
    // Footer: data offset at 16 (u64). Dynamic header: table offset at 16 (u64), max table
    // entries at 28, block size at 32 (u32, big-endian).
    let hdr_off = u64::from_be_bytes(footer[16..24].try_into().unwrap());
    let mut hdr = [0u8; 1024];
    f.seek(SeekFrom::Start(hdr_off)).unwrap();
    f.read_exact(&mut hdr).unwrap();
    let table = u64::from_be_bytes(hdr[16..24].try_into().unwrap());
    let entries = be32(&hdr, 28);
    let span = 512 + be32(&hdr, 32); // bitmap + block
    let first = (len - 512).div_ceil(4096) * 4096;
    let mut bat = vec![0xFFu8; usize::try_from(entries * 4).unwrap()];
    for k in 0..n {
        let sector = u32::try_from((first + (n - 1 - k) * span) / 512).unwrap();
        let at = usize::try_from(k * 4).unwrap();
        bat[at..at + 4].copy_from_slice(&sector.to_be_bytes());
    }
    f.seek(SeekFrom::Start(table)).unwrap();
    f.write_all(&bat).unwrap();
    f.seek(SeekFrom::Start(len - 512)).unwrap();
    f.write_all(&[0u8; 512]).unwrap();
    f.seek(SeekFrom::Start(first + n * span)).unwrap();
    f.write_all(&footer).unwrap();
}

#[test]
fn vhd_largest_table_with_many_blocks_stays_under_64_mib() {
    if !have_time() {
        return;
    }
    let dir = crate::util::tmp();
    let TwoVms {
        vms,
        shared,
        base: [base1, base2],
        child: [child1, child2],
    } = two_vms(dir.path(), "vhd", &["--size", "2040G"]);
    // 128 KiB blocks: 16Mi entries, a 64 MiB table (Limits::max_bat_bytes).
    for (c, b) in [(&child1, &base1), (&child2, &base2)] {
        within_bound(
            &["create", s(c), "--parent", s(b), "--block-size", "128K"],
            0,
        );
        vhd_with_blocks(c, VHD_BLOCKS);
    }
    let (code, out, _) = {
        let o = Command::new(env!("CARGO_BIN_EXE_vhdkit"))
            .args(["info", "--json", s(&child1)])
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!("\"allocated_blocks\": {VHD_BLOCKS}")),
        "{out}"
    );
    within_bound(&["info", s(&child1)], 0);
    within_bound(&["chain", s(&child1)], 0);
    within_bound(&["check", "--chain", s(&child1)], 0);
    within_bound(&["check", s(&vms)], 0);
    within_bound(
        &["reparent", "--dry-run", s(&child1), "--parent", s(&base2)],
        0,
    );
    within_bound(&["reparent", s(&child1), "--parent", s(&base2)], 0);
    let out = dir.path().join("out.vhd");
    within_bound(&["convert", "--to", "vhd", s(&child1), s(&out)], 0);
    within_bound(&["share", s(&vms), "--into", s(&shared)], 0);
}

// ---- VHDX: the largest table the readers accept, and more blocks than the overlap budget ----

/// A VHDX disk of `size` with `bs` blocks at `path`, created by vhdkit (over `parent` when
/// given), measured.
fn vhdx_create(path: &Path, size: &str, bs: &str, parent: Option<&Path>) {
    let mut args = vec!["create", s(path), "--block-size", bs];
    match parent {
        Some(p) => args.extend(["--parent", s(p)]),
        None => args.extend(["--size", size]),
    }
    within_bound(&args, 0);
}

/// File offset of the BAT region of a VHDX, from its first region table (64 KiB at 192 KiB).
fn vhdx_bat_offset(path: &Path) -> u64 {
    const BAT_GUID: [u8; 16] = [
        0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A,
        0x08,
    ];
    let f = std::fs::read(path).unwrap();
    let table = &f[192 << 10..256 << 10];
    let n = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    (0..n)
        .map(|i| &table[16 + 32 * i..48 + 32 * i])
        .find(|e| e[..16] == BAT_GUID)
        .map(|e| u64::from_le_bytes(e[16..24].try_into().unwrap()))
        .expect("a BAT region entry")
}

/// Mark the first `blocks` payload blocks of a VHDX (chunk ratio `cr`, `bs`-byte blocks)
/// FULLY_PRESENT at distinct offsets past its end, growing the file sparsely over them.
fn vhdx_fill_table(path: &Path, blocks: u64, cr: u64, bs: u64) {
    use std::os::unix::fs::FileExt;
    let bat = vhdx_bat_offset(path);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let data_at = f.metadata().unwrap().len().next_multiple_of(1 << 20);
    let entries = blocks + (blocks - 1) / cr;
    let mut raw = vec![0u8; entries as usize * 8];
    for b in 0..blocks {
        let i = (b + b / cr) as usize;
        let e = (data_at + b * bs) | 6; // PAYLOAD_BLOCK_FULLY_PRESENT
        raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    f.write_all_at(&raw, bat).unwrap();
    f.set_len(data_at + blocks * bs).unwrap();
}

#[test]
fn vhdx_commands_stay_under_64_mib_at_the_largest_table_and_past_the_overlap_budget() {
    if !have_time() {
        return;
    }
    let dir = crate::util::tmp();
    // The largest table the readers accept (64 MiB): 16000 GiB in 2 MiB blocks, a dynamic
    // base (8,195,999 entries) and a differencing child (8,196,000).
    let TwoVms {
        vms,
        shared,
        base: [base1, base2],
        child: [child1, _],
    } = two_vms(
        dir.path(),
        "vhdx",
        &["--size", "16000G", "--block-size", "2M"],
    );
    vhdx_create(&child1, "", "2M", Some(&base1));
    within_bound(&["info", s(&child1)], 0);
    within_bound(&["chain", s(&child1)], 0);
    within_bound(&["check", "--chain", s(&child1)], 0);
    within_bound(
        &["reparent", "--dry-run", s(&child1), "--parent", s(&base2)],
        0,
    );
    within_bound(&["reparent", s(&child1), "--parent", s(&base2)], 0);
    // 600,000 present blocks (more than the 512Ki spans the overlap check holds at once, so
    // it runs in passes) in a sparse 1.2 TB child of a 1200 GiB base.
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let (bbase, bchild, bbase2) = (big.join("b.vhdx"), big.join("c.vhdx"), big.join("b2.vhdx"));
    vhdx_create(&bbase, "1200G", "2M", None);
    std::fs::copy(&bbase, &bbase2).unwrap();
    vhdx_create(&bchild, "", "2M", Some(&bbase));
    vhdx_fill_table(&bchild, 600_000, 2048, 2 << 20);
    within_bound(&["info", s(&bchild)], 0);
    within_bound(&["check", "--chain", s(&bchild)], 0);
    within_bound(&["reparent", s(&bchild), "--parent", s(&bbase2)], 0);
    // Convert writes a new VHDX through the on-demand table (the child's blocks are holes:
    // a 64 GiB disk keeps the copy short).
    let small = dir.path().join("small.vhdx");
    vhdx_create(&small, "64G", "2M", None);
    within_bound(
        &[
            "convert",
            "--to",
            "vhdx",
            s(&small),
            s(&dir.path().join("out.vhdx")),
        ],
        0,
    );
    within_bound(&["share", s(&vms), "--into", s(&shared)], 0);
}
