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

/// Python for dissect.hypervisor: opens `argv[1]` as `VHDX(Path(...))` (which follows
/// `relative_path`, then `absolute_win32_path`, with no identity check), prints the parent's
/// path, the SHA-256 of the first `argv[2]` bytes of the virtual disk (0 = all) and the size.
const DISSECT_VHDX: &str = r#"
import sys, hashlib
from pathlib import Path
from dissect.hypervisor.disk.vhdx import VHDX
d = VHDX(Path(sys.argv[1]))
limit = int(sys.argv[2])
size = d.size
left = size if limit == 0 else min(limit, size)
h = hashlib.sha256()
d.seek(0)
while left:
    b = d.read(min(1 << 20, left))
    if not b:
        raise SystemExit("short read")
    h.update(b)
    left -= len(b)
print(d.parent.path if d.parent else "-")
print(h.hexdigest(), size)
"#;

/// A Python interpreter that can import dissect.hypervisor: `VHDKIT_DISSECT_PYTHON`, else
/// `python3` on the PATH. `None` when neither can: skipped (a failure in CI) naming `why`.
pub fn dissect_python(why: &str) -> Option<std::path::PathBuf> {
    let mut cands: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("VHDKIT_DISSECT_PYTHON") {
        cands.push(p.into());
    }
    cands.push("python3".into());
    for c in cands {
        let ok = Command::new(&c)
            .args(["-c", "import dissect.hypervisor"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(c);
        }
    }
    crate::skip_or_fail(&format!(
        "{why}: dissect.hypervisor is not importable (install it in a venv and set \
         VHDKIT_DISSECT_PYTHON to its python)"
    ));
    None
}

/// What dissect.hypervisor makes of the differencing VHDX `child`: the parent path it opened
/// (through the child's locator), the SHA-256 of the first `limit` bytes (0 = the whole
/// virtual disk) and the virtual size. `None` (SKIP printed) without dissect; `Some(Err)` with
/// its error text when it fails.
pub fn dissect_vhdx(child: &Path, limit: u64) -> Option<Result<(String, String, u64), String>> {
    let py = dissect_python("dissect.hypervisor oracle")?;
    let o = Command::new(py)
        .arg("-c")
        .arg(DISSECT_VHDX)
        .arg(child)
        .arg(limit.to_string())
        .output()
        .expect("spawn python");
    if !o.status.success() {
        return Some(Err(String::from_utf8_lossy(&o.stderr).into_owned()));
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines();
    let parent = lines.next().unwrap_or_default().to_string();
    let mut it = lines.next().unwrap_or_default().split_whitespace();
    let hash = it.next().unwrap_or_default().to_string();
    let size = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Some(Ok((parent, hash, size)))
}
