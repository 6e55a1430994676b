//! `vhdkit serve` read by `nbdsh` (libnbd's Python shell) and qemu-img over the chains the
//! testkit's own writers build (never vhdkit): sub-byte sector bitmaps, runs that start and end
//! inside bitmap bytes, 4 KiB VHDX sectors. Bytes match `convert --to raw`, both block status
//! contexts match `vhdkit map`, and the export says it is read-only and multi-conn.

use std::path::Path;
use std::process::Command;

use vhdkit_testkit::chains::{build_chain, ChainFormat};

use crate::serve::{vhdkit_map, Server};
use crate::util::*;

/// Reads the whole export in 3 MiB preads, one unaligned pread, and both block status
/// contexts over the whole disk; prints JSON. The URI comes in `$URI`.
const NBDSH_SCRIPT: &str = r#"
import hashlib, json, os
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.connect_uri(os.environ["URI"])
size = h.get_size()
m = hashlib.sha256()
off = 0
while off < size:
    n = min(size - off, 3 << 20)
    m.update(h.pread(n, off))
    off += n
odd = hashlib.sha256(h.pread(70001, 1048063)).hexdigest()
maps = {}
for ctx in ("base:allocation", "qemu:allocation-depth"):
    runs = []
    off = 0
    while off < size:
        got = []
        def cb(meta, o, entries, err):
            if meta == ctx:
                got.extend(entries)
            return 0
        h.block_status(min(size - off, (1 << 32) - 512), off, cb)
        if not got:
            raise SystemExit("no extents at %d" % off)
        for i in range(0, len(got), 2):
            runs.append([off, got[i], got[i + 1]])
            off += got[i]
    maps[ctx] = runs
print(json.dumps({"size": size, "sha256": m.hexdigest(), "odd": odd,
                  "read_only": h.is_read_only(), "multi_conn": h.can_multi_conn(),
                  "maps": maps}))
h.shutdown()
"#;

/// `nbdsh` with Debian's Python first in `PATH` (the script runs `python3` from `PATH`, and
/// the `nbd` module lives in Debian's, not in a pyenv or venv one).
fn nbdsh() -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = Command::new("nbdsh");
    c.env("PATH", format!("/usr/bin:{path}"));
    c
}

/// `nbdsh`'s JSON report on the export at `uri`.
pub(crate) fn nbdsh_report(uri: &str) -> serde_json::Value {
    let out = run_ok(nbdsh().env("URI", uri).args(["-c", NBDSH_SCRIPT]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdsh output ({e}): {out}"))
}

/// nbdsh's runs of one context, adjacent equal types merged.
fn runs(report: &serde_json::Value, ctx: &str) -> Vec<(u64, u64, u64)> {
    let v = report["maps"][ctx]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |i: usize| r[i].as_u64().unwrap();
            (n(0), n(1), n(2))
        })
        .collect();
    crate::serve::merged(v)
}

/// Serve `leaf`, read it with nbdsh and `qemu-img compare`, check against vhdkit's own read
/// and map.
pub(crate) fn check_served(d: &Path, leaf: &Path, label: &str) {
    let want = p(d, "want.raw");
    let _ = std::fs::remove_file(&want);
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        leaf.as_os_str(),
        want.as_os_str(),
    ]);
    let bytes = std::fs::read(&want).unwrap();
    let mut srv = Server::start(leaf, &p(d, "c.sock"), &[]);
    let r = nbdsh_report(&srv.uri());
    assert_eq!(
        r["size"].as_u64(),
        Some(bytes.len() as u64),
        "{label}: size"
    );
    assert_eq!(
        r["sha256"].as_str().unwrap(),
        sha256_file(&want),
        "{label}: nbdsh pread differs from convert --to raw"
    );
    assert_eq!(
        r["odd"].as_str().unwrap(),
        vhdkit_testkit::sha256_reader(&bytes[1048063..1048063 + 70001]),
        "{label}: unaligned pread"
    );
    assert_eq!(r["read_only"], true, "{label}");
    assert_eq!(r["multi_conn"], true, "{label}");
    assert_eq!(
        runs(&r, "base:allocation"),
        vhdkit_map(leaf, false),
        "{label}"
    );
    assert_eq!(
        runs(&r, "qemu:allocation-depth"),
        vhdkit_map(leaf, true),
        "{label}"
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "raw", &srv.uri()])
            .arg(&want),
    );
    assert_eq!(srv.stop(), 0, "{label}: clean shutdown");
}

fn tools() -> bool {
    let why = "NBD clients against vhdkit serve (Debian python3-libnbd, qemu-utils)";
    let nbdsh_runs = nbdsh()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !nbdsh_runs {
        vhdkit_testkit::skip_or_fail(&format!("{why}: `nbdsh --version` fails"));
        return false;
    }
    have_tool("qemu-img", why)
}

/// Chains of 1 to 5 files (0 to 4 differencing levels), sampled per format.
#[test]
fn nbdsh_reads_testkit_chains() {
    if !tools() {
        return;
    }
    for (format, depths) in [
        (ChainFormat::Vhd, [0usize, 2, 4]),
        (ChainFormat::Vhdx(512), [1, 3, 4]),
        (ChainFormat::Vhdx(4096), [0, 1, 4]),
    ] {
        for depth in depths {
            let d = tmp();
            let vm = d.path().join("vm");
            std::fs::create_dir(&vm).unwrap();
            let c = build_chain(&vm, format, 8 << 20, depth, 300 + depth as u64);
            check_served(
                d.path(),
                c.leaf(),
                &format!("{} depth {depth}", format.label()),
            );
        }
    }
}
