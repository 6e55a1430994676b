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
