//! SIGKILL of `vhdkit serve --writable` in the middle of a stream of writes: the leaf stays a
//! valid disk where every sector of every written range reads all old or all new data, as
//! vhdkit and qemu (an independent reader) see it.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use vhdkit::{ChainOptions, WritableDisk};
use vhdkit_testkit::Rng;

use crate::serve::{handshake, request, simple_reply, Server};
use crate::util::*;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const SLOT: u64 = 2 * MIB;
const WRITES: u64 = 30;

/// Write `i`'s range, and the old data written before serving (if any). One write per 2 MiB
/// slot, so no two overlap; the kinds cycle through ranges that start and end inside a VHD
/// sector bitmap byte (8 sectors), sub-sector pieces, writes into new blocks and across the
/// 1 MiB block boundary.
fn plan(i: u64) -> ((u64, u64), Option<(u64, u64)>) {
    let b = i * SLOT;
    match i % 6 {
        // Sectors 3..6 of a block whose first bitmap byte has sectors 0..3 set.
        0 => ((b + 3 * SECTOR, 3 * SECTOR), Some((b, 3 * SECTOR))),
        // Inside one sector of a fully written block.
        1 => ((b + 700, 100), Some((b, MIB))),
        // A new block, from sector 5 to sector 16 (two bitmap bytes, cut inside both).
        2 => ((b + 5 * SECTOR, 11 * SECTOR), None),
        // Across a block boundary into two new blocks, unaligned at both ends.
        3 => ((b + MIB - 1459, 4096), None),
        // Over a partial byte (sectors 2..9 old) and past it.
        4 => (
            (b + 6 * SECTOR, 12 * SECTOR),
            Some((b + 2 * SECTOR, 7 * SECTOR)),
        ),
        // A large write into a new block.
        _ => ((b + 4096, 600 << 10), None),
    }
}

fn bytes(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    v
}

/// A 64 MiB leaf (1 MiB blocks) holding the old data; returns its contents and the new
/// writes.
fn make_leaf(leaf: &Path) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let s = leaf.to_str().unwrap();
    run_success(["create", "--size", "64M", "--block-size", "1M", s]);
    let mut rng = Rng::new(7);
    let mut w = WritableDisk::open(leaf, &ChainOptions::default()).unwrap();
    let mut writes = Vec::new();
    for i in 0..WRITES {
        let ((off, len), old) = plan(i);
        if let Some((o, l)) = old {
            w.write_at(o, &bytes(&mut rng, l)).unwrap();
        }
        writes.push((off, bytes(&mut rng, len)));
    }
    w.close().unwrap();
    (vhdkit_testkit::through::read_chain(leaf), writes)
}

/// Every sector piece of every range is all old or all new; writes before the acknowledged
/// flush (`flushed`) are new, writes never sent (from `sent`) are old, bytes outside every
/// range are old. Returns how many writes read new.
fn verify(
    who: &str,
    got: &[u8],
    old: &[u8],
    writes: &[(u64, Vec<u8>)],
    flushed: usize,
    sent: usize,
) -> usize {
    assert_eq!(got.len(), old.len(), "{who}: size");
    let mut outside = got.to_vec();
    let mut new_count = 0;
    for (i, (off, data)) in writes.iter().enumerate() {
        let (o, end) = (*off as usize, *off as usize + data.len());
        let mut all_new = true;
        let mut pos = o;
        while pos < end {
            let next = ((pos / 512 + 1) * 512).min(end);
            let (g, n) = (&got[pos..next], &data[pos - o..next - o]);
            let is_new = g == n;
            assert!(
                is_new || g == &old[pos..next],
                "{who}: write {i} at {off}: bytes {pos}..{next} are neither old nor new"
            );
            assert!(
                is_new || i >= flushed,
                "{who}: write {i} was flushed but {pos}..{next} reads old"
            );
            assert!(
                !is_new || i < sent,
                "{who}: write {i} was never sent but {pos}..{next} reads new"
            );
            all_new &= is_new;
            pos = next;
        }
        new_count += usize::from(all_new);
        outside[o..end].copy_from_slice(&old[o..end]);
    }
    if let Some(at) = (0..old.len()).find(|&k| outside[k] != old[k]) {
        let n = (at..old.len())
            .take_while(|&k| outside[k] != old[k])
            .count();
        panic!(
            "{who}: {n} bytes from {at} (slot {}) changed outside every write: {:02x?} -> {:02x?}",
            at as u64 / SLOT,
            &old[at..at + n.min(8)],
            &outside[at..at + n.min(8)]
        );
    }
    new_count
}

/// Serve `leaf` writable, write `acked` ranges one by one (a FLUSH after the first half),
/// pipeline three more, SIGKILL the server. Returns (flushed, sent).
fn write_and_kill(
    d: &Path,
    leaf: &Path,
    writes: &[(u64, Vec<u8>)],
    acked: usize,
) -> (usize, usize) {
    let mut srv = Server::start(leaf, &p(d, "k.sock"), &["--writable"]);
    let mut s = handshake(&srv.socket);
    let flushed = acked / 2;
    for (i, (off, data)) in writes.iter().take(acked).enumerate() {
        if i == flushed {
            request(&mut s, 3, 1000, 0, 0); // NBD_CMD_FLUSH
            assert_eq!(simple_reply(&mut s), (0, 1000), "flush");
        }
        request(&mut s, 1, i as u64, *off, data.len() as u32);
        s.write_all(data).unwrap();
        assert_eq!(simple_reply(&mut s), (0, i as u64), "write {i}");
    }
    let sent = (acked + 3).min(writes.len());
    for (i, (off, data)) in writes.iter().enumerate().take(sent).skip(acked) {
        request(&mut s, 1, i as u64, *off, data.len() as u32);
        s.write_all(data).unwrap();
        if i == acked + 1 {
            // A flush in flight too: the kill may land inside its commit.
            request(&mut s, 3, 1001, 0, 0);
        }
    }
    // Later kill points for larger N: the pipelined requests are partly processed.
    std::thread::sleep(std::time::Duration::from_micros(300 * acked as u64));
    srv.child.kill().unwrap();
    let status = srv.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the server died of SIGKILL: {status:?}"
    );
    (flushed, sent)
}

/// qemu's read of the killed leaf, from a copy (for VHDX, `qemu-img check -r all` replays a
/// log the kill left first).
fn qemu_read(d: &Path, leaf: &Path, ext: &str) -> Vec<u8> {
    let fmt = if ext == "vhd" { "vpc" } else { "vhdx" };
    let copy = p(d, &format!("copy.{ext}"));
    std::fs::copy(leaf, &copy).unwrap();
    if ext == "vhdx" {
        run_ok(
            Command::new("qemu-img")
                .args(["check", "-q", "-r", "all", "-f", fmt])
                .arg(&copy),
        );
    }
    let raw = p(d, "qemu.raw");
    let _ = std::fs::remove_file(&raw);
    qemu_to_raw(fmt, &copy, &raw);
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    std::fs::remove_file(&copy).unwrap();
    v
}

/// vhdkit's read of the killed leaf. `check` must find no error; a kill between a VHDX log
/// entry's write and its application leaves the entry to replay (`vhdx.log.dirty`, a warning:
/// readers replay it), which is the only finding allowed, and `repair` must then leave the leaf
/// clean with the same contents.
fn vhdkit_read(d: &Path, leaf: &Path) -> Vec<u8> {
    let checked = run(["check".as_ref(), leaf.as_os_str()]);
    let dirty = checked.code != 0;
    if dirty {
        let codes: Vec<&str> = checked
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("warning "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(
            checked.stdout.contains(" 0 error(s)") && codes == ["vhdx.log.dirty"],
            "the killed leaf: {checked:?}"
        );
    }
    let v = vhdkit_raw(d, leaf);
    if dirty {
        run_success(["repair".as_ref(), leaf.as_os_str()]);
        run_success(["check".as_ref(), leaf.as_os_str()]);
        assert!(
            vhdkit_raw(d, leaf) == v,
            "repair changed what the leaf reads"
        );
    }
    v
}

fn vhdkit_raw(d: &Path, leaf: &Path) -> Vec<u8> {
    let raw = p(d, "vhdkit.raw");
    let _ = std::fs::remove_file(&raw);
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        leaf.as_os_str(),
        raw.as_os_str(),
    ]);
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    v
}

fn kill_during_writes(ext: &str) {
    if !have_tool("qemu-img", "qemu reads the leaf a killed server left") {
        return;
    }
    for acked in [0usize, 4, 13, 26] {
        let d = tmp();
        let leaf = p(d.path(), &format!("leaf.{ext}"));
        let (old, writes) = make_leaf(&leaf);
        let (flushed, sent) = write_and_kill(d.path(), &leaf, &writes, acked);
        let q = qemu_read(d.path(), &leaf, ext);
        let qn = verify(
            &format!("{ext} N={acked} qemu"),
            &q,
            &old,
            &writes,
            flushed,
            sent,
        );
        let v = vhdkit_read(d.path(), &leaf);
        let vn = verify(
            &format!("{ext} N={acked} vhdkit"),
            &v,
            &old,
            &writes,
            flushed,
            sent,
        );
        eprintln!(
            "{ext} killed after {acked} acks ({flushed} flushed, {sent} sent): new writes \
             qemu {qn} vhdkit {vn}"
        );
    }
}

#[test]
fn sigkill_during_writes_leaves_vhdx_leaf_old_or_new() {
    kill_during_writes("vhdx");
}

#[test]
fn sigkill_during_writes_leaves_vhd_leaf_old_or_new() {
    kill_during_writes("vhd");
}
