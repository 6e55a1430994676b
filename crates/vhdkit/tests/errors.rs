//! Errors a program can act on: every failure a caller may meet is matched through
//! `Error::kind()`, with its typed details, and messages name no command-line flag.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::path::{Path, PathBuf};

use vhdkit::reparent::{self, ReparentOptions};
use vhdkit::{
    create, Chain, ChainOptions, CreateParams, Disk, Error, ErrorKind, Limits, WritableDisk,
};
use vhdkit_testkit::vhd::VhdBuilder;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `base.vhdx` and a differencing `child.avhdx` over it.
fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    (base, child)
}

/// No message names a flag of the CLI.
fn assert_no_flag(e: &Error) {
    let s = e.to_string();
    assert!(!s.contains(" --"), "a flag in a library message: {s}");
}

#[test]
fn not_a_disk() {
    let t = tmp();
    let f = t.path().join("notes.vhd");
    std::fs::write(&f, vec![0x5a; 4096]).unwrap();
    let e = Disk::open(&f).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::NotADisk { path: Some(p) } if p == f),
        "{e}"
    );
    assert_eq!(e.kind().name(), "not_a_disk");
    assert_eq!(e.code(), Some("file.not_a_disk"));
}

#[test]
fn corrupt_names_structure_and_offset() {
    let t = tmp();
    let f = t.path().join("d.vhdx");
    create(&f, &CreateParams::dynamic(8 << 20)).unwrap();
    // Both headers (at 64 KiB and 128 KiB) damaged: the file cannot be opened.
    let mut b = std::fs::read(&f).unwrap();
    b[0x10000 + 8] ^= 0xff;
    b[0x20000 + 8] ^= 0xff;
    std::fs::write(&f, &b).unwrap();
    let e = Disk::open(&f).unwrap_err();
    match e.kind() {
        ErrorKind::Corrupt { location, .. } => {
            assert_eq!(location.path.as_deref(), Some(f.as_path()), "{e}");
            assert!(location.structure.contains("header"), "{e}");
        }
        _ => panic!("expected corrupt, got {e}"),
    }
    assert_eq!(e.kind().name(), "corrupt");
    assert_eq!(e.code(), Some("vhdx.header.none_valid"));
}

#[test]
fn parent_not_found_lists_every_attempt() {
    let t = tmp();
    let (base, child) = pair(t.path());
    let id = Disk::open(&base).unwrap().identity();
    std::fs::remove_file(&base).unwrap();
    let e = Chain::open(&child, &ChainOptions::default()).unwrap_err();
    match e.kind() {
        ErrorKind::ParentNotFound {
            child: c,
            expected_id,
            attempts,
        } => {
            assert_eq!(c, child);
            assert_eq!(expected_id, id);
            assert!(!attempts.is_empty());
            assert!(attempts.iter().any(|a| a.path == base), "{attempts:?}");
            assert!(
                attempts
                    .iter()
                    .all(|a| a.outcome == vhdkit::AttemptOutcome::NotFound),
                "{e}"
            );
        }
        _ => panic!("expected parent not found, got {e}"),
    }
    assert_eq!(e.code(), Some("chain.parent_missing"));
    assert_no_flag(&e);
}

#[test]
fn another_disk_at_the_parent_path_is_an_identity_mismatch() {
    let t = tmp();
    let (base, child) = pair(t.path());
    std::fs::remove_file(&base).unwrap();
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    let e = Chain::open(&child, &ChainOptions::default()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ParentNotFound { .. }), "{e}");
    assert_eq!(e.code(), Some("chain.identity_mismatch"));
}

#[test]
fn reparent_onto_another_disk_is_a_parent_mismatch() {
    let t = tmp();
    let (base, child) = pair(t.path());
    let other = t.path().join("other.vhdx");
    create(&other, &CreateParams::dynamic(8 << 20)).unwrap();
    let o = ReparentOptions {
        new_parent: other.clone(),
        ..ReparentOptions::default()
    };
    let e = reparent::plan(&child, &o).unwrap_err();
    match e.kind() {
        ErrorKind::ParentMismatch {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, Some(child.as_path()));
            assert_eq!(expected, Disk::open(&base).unwrap().identity());
            assert_eq!(found, Disk::open(&other).unwrap().identity());
        }
        _ => panic!("expected a parent mismatch, got {e}"),
    }
    assert_eq!(e.kind().name(), "parent_mismatch");
    assert_no_flag(&e);
}

#[test]
fn chain_loop() {
    let t = tmp();
    let (a, b) = (t.path().join("a.vhd"), t.path().join("b.vhd"));
    let (ida, idb) = ([0xa; 16], [0xb; 16]);
    VhdBuilder::differencing(1 << 20, idb)
        .unique_id(ida)
        .parent_name("b.vhd")
        .build()
        .write_to(&a);
    VhdBuilder::differencing(1 << 20, ida)
        .unique_id(idb)
        .parent_name("a.vhd")
        .build()
        .write_to(&b);
    let e = Chain::open(&a, &ChainOptions::default()).unwrap_err();
    match e.kind() {
        ErrorKind::ChainLoop { child, parent } => {
            assert_eq!(child, b);
            assert_eq!(parent, a);
        }
        _ => panic!("expected a loop, got {e}"),
    }
    assert_eq!(e.code(), Some("chain.loop"));
}

#[test]
fn chain_too_deep() {
    let t = tmp();
    let (_, child) = pair(t.path());
    let grandchild = t.path().join("grandchild.avhdx");
    create(&grandchild, &CreateParams::differencing(&child)).unwrap();
    let mut limits = Limits::default();
    limits.max_chain_depth = 2;
    let opts = ChainOptions::default().open_options(vhdkit::OpenOptions::new().limits(limits));
    let e = Chain::open(&grandchild, &opts).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ChainTooDeep { limit: 2 }),
        "{e}"
    );
    assert_eq!(e.code(), Some("chain.too_deep"));
}

#[test]
fn already_exists() {
    let t = tmp();
    let f = t.path().join("d.vhd");
    create(&f, &CreateParams::dynamic(1 << 20)).unwrap();
    let e = create(&f, &CreateParams::dynamic(1 << 20)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AlreadyExists { path } if path == f),
        "{e}"
    );
    assert!(e.to_string().contains("already exists"), "{e}");

    let dst = t.path().join("copy.vhd");
    std::fs::write(&dst, b"keep me").unwrap();
    let opts = vhdkit::convert::ConvertOptions::default();
    let view = Chain::open(&f, &ChainOptions::default())
        .unwrap()
        .into_view();
    let e =
        vhdkit::convert::to_path(&view, &dst, vhdkit::convert::Target::Vhd, &opts, ()).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::AlreadyExists { path } if path == dst),
        "{e}"
    );
    assert_no_flag(&e);
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
}

#[test]
fn locked_by_another_writer() {
    let t = tmp();
    let f = t.path().join("d.vhdx");
    create(&f, &CreateParams::dynamic(8 << 20)).unwrap();
    let held = File::open(&f).unwrap();
    held.try_lock().unwrap();
    let e = WritableDisk::open(&f, &ChainOptions::default()).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Locked { path: Some(p) } if p == f),
        "{e}"
    );
    assert_eq!(e.kind().name(), "locked");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(held);
    WritableDisk::open(&f, &ChainOptions::default()).unwrap();
}

#[test]
fn limit_exceeded() {
    let t = tmp();
    let f = t.path().join("d.vhdx");
    create(&f, &CreateParams::dynamic(1 << 30)).unwrap();
    let mut limits = Limits::default();
    limits.max_bat_bytes = 8;
    let e = Disk::open_with(&f, &vhdkit::OpenOptions::new().limits(limits)).unwrap_err();
    match e.kind() {
        ErrorKind::LimitExceeded {
            location, limit, ..
        } => {
            assert_eq!(limit, 8);
            assert_eq!(location.path.as_deref(), Some(f.as_path()));
        }
        _ => panic!("expected a limit, got {e}"),
    }
    assert_eq!(e.kind().name(), "limit_exceeded");
}

#[test]
fn a_bad_option_is_named() {
    let t = tmp();
    let (base, _) = pair(t.path());
    let mut p = CreateParams::differencing(&base);
    p.size = Some(16 << 20);
    let e = create(t.path().join("c.avhdx"), &p).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::InvalidArgument {
                option: Some("size")
            }
        ),
        "{e}"
    );
    assert_no_flag(&e);

    let e = create(t.path().join("noext"), &CreateParams::dynamic(1 << 20)).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::InvalidArgument {
                option: Some("format")
            }
        ),
        "{e}"
    );
    assert_no_flag(&e);
}

#[test]
fn io_errors_keep_the_path() {
    let e = Disk::open("/nonexistent/disk.vhd").unwrap_err();
    match e.kind() {
        ErrorKind::Io { path, source } => {
            assert_eq!(path, Some(Path::new("/nonexistent/disk.vhd")));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        _ => panic!("expected io, got {e}"),
    }
}

#[test]
fn internal_is_not_a_refusal() {
    let e = Error::internal("a plan that does not hold");
    assert!(matches!(e.kind(), ErrorKind::Internal));
    assert_eq!(e.kind().name(), "internal");
    assert_eq!(e.to_string(), "internal: a plan that does not hold");
}
