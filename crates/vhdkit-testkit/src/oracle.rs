//! Independent readers used as oracles: libvhdi (through Debian's `python3-libvhdi`) for
//! differencing chains, qemu-img for standalone images. See `../shared/docs/ORACLES.md` for what
//! each gets right and wrong (libvhdi misreads VHD bitmap bytes whose set bits are not a single
//! run ending at the byte's last sector, and ignores VHDX logs).

use std::path::Path;
use std::process::Command;

/// Python run with Debian's interpreter: opens `argv[1]`, attaches `argv[2..]` as the parent
/// chain explicitly (libvhdi checks each parent's identity), prints the SHA-256 of the whole
/// virtual disk and the media size.
const PYVHDI_CHAIN_SHA256: &str = r#"
import sys, os, hashlib, pyvhdi
paths = sys.argv[1:]
handles = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    handles.append(f)
for child, parent in zip(handles, handles[1:]):
    child.set_parent(parent)
top = handles[0]
h = hashlib.sha256()
top.seek_offset(0, os.SEEK_SET)
left = top.media_size
while left:
    b = top.read_buffer(min(1 << 20, left))
    if not b:
        raise SystemExit("short read")
    h.update(b)
    left -= len(b)
print(h.hexdigest(), top.media_size)
"#;

/// SHA-256 of the virtual disk of `chain[0]` read by libvhdi with `chain[1..]` attached as its
/// parents, and the media size. `None` (with a SKIP line) when pyvhdi is not installed.
pub fn pyvhdi_chain_sha256(chain: &[&Path]) -> Option<(String, u64)> {
    if !crate::have_python_module("pyvhdi", "libvhdi oracle") {
        return None;
    }
    let out = crate::run_ok(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(PYVHDI_CHAIN_SHA256)
            .args(chain),
    );
    let mut it = out.split_whitespace();
    let hash = it.next().expect("hash").to_string();
    let size = it.next().and_then(|s| s.parse().ok()).expect("size");
    Some((hash, size))
}

/// libvhdi's verdict on linking `child` to `parent`: `Ok(())`, or its error text
/// (for example "mismatch in identifier").
pub fn pyvhdi_set_parent(child: &Path, parent: &Path) -> Option<Result<(), String>> {
    if !crate::have_python_module("pyvhdi", "libvhdi oracle") {
        return None;
    }
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg("import sys, pyvhdi\nc=pyvhdi.file(); c.open(sys.argv[1])\np=pyvhdi.file(); p.open(sys.argv[2])\nc.set_parent(p)\n")
        .arg(child)
        .arg(parent)
        .output()
        .expect("spawn python3");
    Some(if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    })
}
