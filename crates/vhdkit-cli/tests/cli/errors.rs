//! Bad input: one clear line on stderr, a non-zero exit, no panic, and JSON errors on --json.

use crate::util::*;

fn assert_clean_failure(r: &Run, code: i32, needle: &str) {
    assert_eq!(r.code, code, "{r:?}");
    assert!(!r.stderr.contains("panicked"), "panic: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {r:?}");
    assert!(lines[0].starts_with("vhdkit: error: "), "{r:?}");
    assert!(r.stderr.contains(needle), "expected {needle:?} in {r:?}");
}

#[test]
fn missing_file() {
    let r = run(["info", "/nonexistent/disk.vhd"]);
    assert_clean_failure(&r, 2, "/nonexistent/disk.vhd");
}

#[test]
fn not_a_disk() {
    let d = tmp();
    let f = p(d.path(), "junk.vhd");
    std::fs::write(&f, vec![0x5au8; 4096]).unwrap();
    for cmd in ["info", "chain"] {
        let r = run([cmd.as_ref(), f.as_os_str()]);
        assert_clean_failure(&r, 2, "not a vhd or vhdx file");
    }
    let r = run(["info".as_ref(), "--json".as_ref(), f.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.json()["error"].as_str().unwrap().contains("junk.vhd"));
}

#[test]
fn empty_file() {
    let d = tmp();
    let f = p(d.path(), "empty.vhdx");
    std::fs::write(&f, b"").unwrap();
    let r = run(["info".as_ref(), f.as_os_str()]);
    assert_clean_failure(&r, 2, "empty.vhdx");
}

#[test]
fn truncated_images_fail_cleanly() {
    if !have_tool("qemu-img", "truncation") {
        return;
    }
    let d = tmp();
    for (fmt, ext) in [("vpc", "vhd"), ("vhdx", "vhdx")] {
        let img = p(d.path(), &format!("full.{ext}"));
        qemu_create(fmt, "subformat=dynamic", &img, "16M");
        qemu_io(fmt, &img, &["write -P 0x77 0 4M"]);
        let bytes = std::fs::read(&img).unwrap();
        for cut in [
            1usize,
            511,
            512,
            1024,
            1536,
            4096,
            65536,
            1 << 20,
            bytes.len() / 2,
            bytes.len() - 1,
        ] {
            if cut >= bytes.len() {
                continue;
            }
            let t = p(d.path(), &format!("cut{cut}.{ext}"));
            std::fs::write(&t, &bytes[..cut]).unwrap();
            // Every cut is damage, except a VHD one byte short: its end footer is then 511
            // bytes long, which Virtual PC before 2004 wrote and vhdkit accepts (check: info).
            let opens = fmt == "vpc" && cut == bytes.len() - 1;
            for cmd in ["info", "chain"] {
                let r = run([cmd.as_ref(), t.as_os_str()]);
                if opens {
                    assert_eq!(r.code, 0, "{fmt} cut {cut} {cmd}: {r:?}");
                } else {
                    assert_clean_failure(&r, 2, &format!("cut{cut}.{ext}"));
                }
            }
            // One byte holds no signature: convert reads such a file as raw (README), so the
            // convert check starts where the signature is there.
            if cut < 8 {
                continue;
            }
            let out = p(d.path(), &format!("cut{cut}.raw"));
            let r = run([
                "convert".as_ref(),
                "--to".as_ref(),
                "raw".as_ref(),
                t.as_os_str(),
                out.as_os_str(),
            ]);
            if opens {
                assert_eq!(r.code, 0, "{fmt} cut {cut} convert: {r:?}");
            } else {
                assert_clean_failure(&r, 2, &format!("cut{cut}.{ext}"));
                assert!(
                    !out.exists(),
                    "{fmt} cut {cut}: output left by a failed convert"
                );
            }
        }
    }
}

#[test]
fn bad_map_argument_is_a_refusal() {
    let r = run(["chain", "--map", "nonsense", "x.vhd"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("map 'nonsense'"), "{r:?}");
}

#[test]
fn usage_errors_exit_1() {
    // A bad argument is a refusal (README: exit 1), as `--map nonsense` above.
    let r = run(["info"]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = run(["frobnicate"]);
    assert_eq!(r.code, 1, "{r:?}");
}

/// `--json` errors carry the kind a script can branch on, and the stable `check` code where
/// one applies; the CLI adds the flag hints the library leaves out.
mod json_kinds {
    use super::*;
    use std::path::{Path, PathBuf};
    use vhdkit_testkit::vhd::VhdBuilder;

    fn json_error(r: &Run, exit: i32, kind: &str) -> serde_json::Value {
        assert_eq!(r.code, exit, "{r:?}");
        let j = r.json();
        assert_eq!(j["kind"], kind, "{r:?}");
        assert_eq!(j["exit_code"], exit, "{r:?}");
        j
    }

    /// `base.vhdx` and a differencing `child.avhdx` over it, made by vhdkit.
    fn pair(dir: &Path) -> (PathBuf, PathBuf) {
        let (base, child) = (p(dir, "base.vhdx"), p(dir, "child.avhdx"));
        run_success([
            "create".as_ref(),
            "--size".as_ref(),
            "8M".as_ref(),
            base.as_os_str(),
        ]);
        let parent = ["--parent".as_ref(), base.as_os_str()];
        run_success([&["create".as_ref()][..], &parent, &[child.as_os_str()]].concat());
        (base, child)
    }

    #[test]
    fn not_a_disk() {
        let d = tmp();
        let f = p(d.path(), "junk.vhd");
        std::fs::write(&f, vec![0x5au8; 4096]).unwrap();
        let r = run(["info".as_ref(), "--json".as_ref(), f.as_os_str()]);
        let j = json_error(&r, 2, "not_a_disk");
        assert_eq!(j["code"], "file.not_a_disk");
    }

    /// A corrupt disk: the code `check` reports for the same damage, and the offset in the line.
    #[test]
    fn corrupt_carries_the_check_code() {
        let d = tmp();
        let (base, _) = pair(d.path());
        let mut b = std::fs::read(&base).unwrap();
        // Both region tables (at 192 KiB and 256 KiB) fail their CRC.
        b[0x30010] ^= 0xff;
        b[0x40010] ^= 0xff;
        std::fs::write(&base, &b).unwrap();
        let r = run(["info".as_ref(), "--json".as_ref(), base.as_os_str()]);
        let j = json_error(&r, 2, "corrupt");
        assert_eq!(j["code"], "vhdx.region.checksum", "{r:?}");
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .contains("vhdx region table 1 at offset 0x30000"),
            "{r:?}"
        );
        let r = run(["check".as_ref(), "--json".as_ref(), base.as_os_str()]);
        let report = r.json();
        let codes: Vec<&str> = report["files"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap())
            .collect();
        assert!(codes.contains(&"vhdx.region.checksum"), "{r:?}");
    }

    #[test]
    fn parent_not_found() {
        let d = tmp();
        let (base, child) = pair(d.path());
        std::fs::remove_file(&base).unwrap();
        let out = p(d.path(), "out.img");
        let r = run([
            "convert".as_ref(),
            "--json".as_ref(),
            "--to".as_ref(),
            "raw".as_ref(),
            child.as_os_str(),
            out.as_os_str(),
        ]);
        let j = json_error(&r, 2, "parent_not_found");
        assert_eq!(j["code"], "chain.parent_missing");
    }

    #[test]
    fn parent_mismatch_gets_the_flag_hint() {
        let d = tmp();
        let (_, child) = pair(d.path());
        let other = p(d.path(), "other.vhdx");
        run_success([
            "create".as_ref(),
            "--size".as_ref(),
            "8M".as_ref(),
            other.as_os_str(),
        ]);
        let r = run([
            "reparent".as_ref(),
            "--json".as_ref(),
            child.as_os_str(),
            "--parent".as_ref(),
            other.as_os_str(),
        ]);
        let j = json_error(&r, 1, "parent_mismatch");
        assert_eq!(j["code"], "chain.identity_mismatch");
        let line = j["error"].as_str().unwrap();
        assert!(line.contains("--ignore-id-mismatch"), "{line}");
        assert!(r.stderr.contains("--verify-content OLDPARENT"), "{r:?}");
    }

    #[test]
    fn already_exists() {
        let d = tmp();
        let (base, _) = pair(d.path());
        let r = run([
            "create".as_ref(),
            "--json".as_ref(),
            "--size".as_ref(),
            "8M".as_ref(),
            base.as_os_str(),
        ]);
        let j = json_error(&r, 1, "already_exists");
        assert!(j.get("code").is_none(), "{j}");
        // convert has --force: its error says so.
        let dst = p(d.path(), "copy.vhdx");
        std::fs::write(&dst, b"keep").unwrap();
        let r = run([
            "convert".as_ref(),
            "--to".as_ref(),
            "vhdx".as_ref(),
            base.as_os_str(),
            dst.as_os_str(),
        ]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("already exists"), "{r:?}");
        assert!(r.stderr.contains("(use --force to replace it)"), "{r:?}");
        assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
    }

    #[test]
    fn locked() {
        let d = tmp();
        let (base, _) = pair(d.path());
        let held = std::fs::File::open(&base).unwrap();
        held.try_lock().unwrap();
        let r = run(["repair".as_ref(), "--json".as_ref(), base.as_os_str()]);
        json_error(&r, 1, "locked");
        assert!(r.stderr.contains("in use by another process"), "{r:?}");
    }

    #[test]
    fn limit_exceeded() {
        let d = tmp();
        let f = p(d.path(), "huge-bat.vhd");
        let mut v = VhdBuilder::dynamic(1 << 20).build();
        // Max table entries (dynamic header at 512, field at +28): a 64 MiB + 4 byte table,
        // above the default limit, checked before the table's place in the file.
        v.set_u32(512 + 28, (16 << 20) + 1);
        v.fix_header_checksum();
        v.write_to(&f);
        let r = run(["info".as_ref(), "--json".as_ref(), f.as_os_str()]);
        json_error(&r, 2, "limit_exceeded");
    }

    #[test]
    fn bad_option_and_usage() {
        let d = tmp();
        let f = p(d.path(), "noext");
        let r = run([
            "create".as_ref(),
            "--json".as_ref(),
            "--size".as_ref(),
            "8M".as_ref(),
            f.as_os_str(),
        ]);
        let j = json_error(&r, 1, "invalid_argument");
        assert!(
            j["error"].as_str().unwrap().ends_with("; give --format"),
            "{j}"
        );
        let r = run(["info", "--json", "--no-such-flag"]);
        json_error(&r, 1, "invalid_argument");
    }
}
