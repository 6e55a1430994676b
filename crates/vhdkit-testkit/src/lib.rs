//! Test support for vhdkit (not published): paths to the shared real images, decompression,
//! digests, external-tool detection, and small image builders used until vhdkit can write.
//!
//! Tests that need something absent (the shared images, qemu-img, pyvhdi, strace, ...) go
//! through [`skip_or_fail`]: with `CI=true` the test fails with the reason; otherwise it prints a
//! `SKIP:` line on stdout, records it in `target/vhdkit-skips.txt` and returns early. Never write
//! a bare `return` for a missing tool or image: call a helper of this crate instead.

pub mod corpus;
pub mod foreign;
pub mod kill;
pub mod lab;
pub mod mount;
pub mod vhd;
pub mod vhdx;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub mod oracle;
pub mod skip;
pub mod snapshot;
pub mod through;
pub mod writes;

pub use skip::{require_file, skip_or_fail};

/// Root of the vhdkit workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The project's own bundled test images (`testdata/`).
pub fn testdata_dir() -> PathBuf {
    workspace_root().join("testdata")
}

/// The shared real images (`VHDKIT_REAL_TESTDATA`, default `../shared/testdata-real` beside the
/// workspace). `None`, with a loud SKIP line naming `why`, when absent.
pub fn real_data_dir(why: &str) -> Option<PathBuf> {
    // Default: `shared/testdata-real` beside the workspace, or beside any folder above it
    // (a git worktree may sit deeper than the main checkout).
    let dir = std::env::var_os("VHDKIT_REAL_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = workspace_root();
            root.ancestors()
                .skip(1)
                .map(|a| a.join("shared/testdata-real"))
                .find(|d| d.join("SOURCES.md").is_file())
                .unwrap_or_else(|| root.join("../shared/testdata-real"))
        });
    if dir.join("SOURCES.md").is_file() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "{why}: shared real test images not found at {} (set VHDKIT_REAL_TESTDATA)",
            dir.display()
        ));
        None
    }
}

/// Decompress a shared real image (`.gz`, `.bz2` or plain) into `dest_dir`; returns its path.
pub fn unpack_real(real_dir: &Path, rel: &str, dest_dir: &Path) -> PathBuf {
    let src = real_dir.join(rel);
    let name = Path::new(rel)
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let (out_name, tool) = if let Some(n) = name.strip_suffix(".gz") {
        (n.to_string(), Some("gzip"))
    } else if let Some(n) = name.strip_suffix(".bz2") {
        (n.to_string(), Some("bzip2"))
    } else {
        (name.clone(), None)
    };
    let out = dest_dir.join(out_name);
    match tool {
        Some(t) => {
            let o = Command::new(t)
                .arg("-dc")
                .arg(&src)
                .output()
                .unwrap_or_else(|e| panic!("running {t} -dc {}: {e}", src.display()));
            assert!(o.status.success(), "{t} -dc {} failed", src.display());
            std::fs::write(&out, o.stdout).expect("write unpacked image");
        }
        None => {
            std::fs::copy(&src, &out).expect("copy image");
        }
    }
    out
}

/// SHA-256 of everything a reader yields, as lower-case hex.
pub fn sha256_reader(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

/// SHA-256 of a byte slice.
pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of a file.
pub fn sha256_file(p: &Path) -> String {
    sha256_reader(std::fs::File::open(p).expect("open for hashing"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// True when `cmd` is an executable file: a path, or a name found on `PATH`; otherwise skips
/// (fails in CI) naming `why`. A lookup rather than a probe run: tools disagree on how to ask
/// their version (`mkfs.xfs` and `filefrag` know only `-V`, others only `--version`).
pub fn have_tool(cmd: &str, why: &str) -> bool {
    let ok = find_executable(cmd).is_some();
    if !ok {
        skip_or_fail(&format!("{why}: `{cmd}` is not installed (not on PATH)"));
    }
    ok
}

/// Where `cmd` runs from: itself when it names a path, else the first executable file of that
/// name in a `PATH` folder.
pub fn find_executable(cmd: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd)).filter(|p| executable(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| executable(p))
}

/// True when Python can import `module` with `/usr/bin/python3` (Debian's pyvhdi lives there);
/// otherwise skips (fails in CI) naming `why`.
pub fn have_python_module(module: &str, why: &str) -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip_or_fail(&format!(
            "{why}: python module `{module}` is not importable by /usr/bin/python3"
        ));
    }
    ok
}

/// Run a command, panic with its stderr unless it succeeds, return stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A deterministic pseudo-random generator (xorshift64*), for seeded tests without a crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator; seed 0 is replaced by a fixed non-zero value.
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fill a buffer with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Chains of any depth for the tests of `merge` and `flatten`.
pub mod chains;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::find_executable;
    use std::os::unix::fs::PermissionsExt;

    /// Found by name on PATH, or by path only when executable; never by running it (so tools
    /// without `--version` count).
    #[test]
    fn executables_are_found_without_running_them() {
        let sh = find_executable("sh").expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_executable("vhdkit-no-such-tool-here"), None);
        let d = tempfile::tempdir().unwrap();
        let tool = d.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\nexit 1\n").unwrap();
        let by_path = tool.to_str().unwrap();
        assert_eq!(find_executable(by_path), None, "not executable yet");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // It exits 1 (as `mkfs.xfs --version` would): still a tool that is there.
        assert_eq!(find_executable(by_path), Some(tool.clone()));
        assert_eq!(
            find_executable(d.path().to_str().unwrap()),
            None,
            "a folder"
        );
    }
}
