//! Sets `cfg(vhdkit_workspace)` when the crate is built inside its repository, where the
//! unpublished `vhdkit-testkit` and the repository's README and testdata exist. Unit tests that
//! need them are gated on it, so the published package (which has none of them) still builds
//! and runs its own tests.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vhdkit_workspace)");
    println!("cargo::rerun-if-changed=build.rs");
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let crates = Path::new(&dir).join("..");
    let in_workspace = crates.join("vhdkit-testkit/Cargo.toml").is_file()
        && crates.join("../README.md").is_file()
        && crates.join("../testdata").is_dir();
    if in_workspace {
        println!("cargo::rustc-cfg=vhdkit_workspace");
    }
}
