//! Skips that are loud locally and failures in CI.
//!
//! A test whose oracle or data is missing calls [`skip_or_fail`] and returns. Locally the reason
//! is printed on stdout (`cargo test` shows it with `--nocapture`, and `.ci/run` lists every
//! skip of the run from `target/vhdkit-skips.txt`). With `CI=true` the call panics: CI provisions
//! every oracle, so a missing one is a broken pipeline, not a reason to pass.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the file, in the target folder, that collects the skips of local runs.
pub const SKIPS_FILE: &str = "vhdkit-skips.txt";

/// True when the environment says this is a CI run (`CI=true`, as GitHub and GitLab set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Skip the calling test for `reason`: a failure (panic) in CI, a loud `SKIP:` line otherwise.
/// The caller returns right after.
pub fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("CI=true and a test needs what is missing: {reason}");
    }
    let line = format!("SKIP: {reason}");
    println!("{line}");
    record(&line);
}

/// `path` exists as a file or folder; otherwise skip (fail in CI) naming `why`.
pub fn require_file(path: &Path, why: &str) -> bool {
    let ok = path.exists();
    if !ok {
        skip_or_fail(&format!("{why}: {} is missing", path.display()));
    }
    ok
}

/// Where local skips are collected: `$CARGO_TARGET_DIR/vhdkit-skips.txt`, else the workspace's
/// `target/`.
pub fn skips_file() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join(SKIPS_FILE)
}

fn record(line: &str) {
    let path = skips_file();
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        // The stdout line above is still there; losing the summary is not worth a failure.
        println!("(could not record the skip in {}: {e})", path.display());
    }
}
