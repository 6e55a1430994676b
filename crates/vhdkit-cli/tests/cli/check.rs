//! `vhdkit check`, driven through the real binary: a representative subset of the hostile
//! corpus (every consumer command fails cleanly or succeeds, nothing changes), real images,
//! files vhdkit and qemu create, a comparison with `qemu-img check -f vhdx`, folders and exit
//! codes.

use std::path::Path;

use vhdkit_testkit::corpus::cases;

use crate::util::{have_tool, qemu_create, qemu_io, run, sha256_file, tmp};

fn codes(j: &serde_json::Value) -> Vec<String> {
    j["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["findings"].as_array().unwrap().iter())
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

/// Run the binary, under `/usr/bin/time` when `measure`, to learn its peak RSS (KiB).
/// Output that cannot be parsed is a failure: a bound that silently stops applying is no bound.
fn run_measured(args: &[String], dir: &Path, measure: bool) -> (crate::util::Run, Option<u64>) {
    if !measure {
        return (run(args), None);
    }
    let out = dir.join("rss.txt");
    let o = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let rss = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{args:?}: unparsable /usr/bin/time output {text:?}"));
    std::fs::remove_file(&out).unwrap();
    (o.into(), Some(rss))
}

fn problems(j: &serde_json::Value) -> u64 {
    j["errors"].as_u64().unwrap() + j["warnings"].as_u64().unwrap()
}

#[test]
fn corpus_subset_through_the_binary() {
    let all = cases(false);
    let t = tmp();
    let mut n = 0;
    let mut max_rss = 0u64;
    let measure = vhdkit_testkit::require_file(
        Path::new("/usr/bin/time"),
        "peak-RSS bound of the corpus run",
    );
    for (i, c) in all.iter().enumerate() {
        if i % 5 != 0 && !c.chain {
            continue;
        }
        let dir = t.path().join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, b) in &c.files {
            std::fs::write(dir.join(name), b).unwrap();
        }
        let target = dir.join(&c.files[0].0);
        let before: Vec<String> = c
            .files
            .iter()
            .map(|(n, _)| sha256_file(&dir.join(n)))
            .collect();
        let mut args = vec!["check".to_string(), "--json".to_string()];
        if c.chain {
            args.push("--chain".into());
        }
        args.push(target.display().to_string());
        let r = run(&args);
        let j = r.json();
        let found = codes(&j);
        assert!(
            found.iter().any(|f| f == c.expect),
            "{}: expected {} in {found:?}",
            c.name,
            c.expect
        );
        let want = if problems(&j) > 0 { 1 } else { 0 };
        assert_eq!(r.code, want, "{}: {r:?}", c.name);
        println!("{:<34} exit {} {}", c.name, r.code, found.join(","));
        for cmd in [
            vec!["info".to_string(), target.display().to_string()],
            vec!["chain".to_string(), target.display().to_string()],
            vec![
                "convert".to_string(),
                "--to".to_string(),
                "raw".to_string(),
                "--force".to_string(),
                target.display().to_string(),
                dir.join("out.raw").display().to_string(),
            ],
        ] {
            let (r, rss_kib) = run_measured(&cmd, &dir, measure);
            assert!((0..=2).contains(&r.code), "{} {cmd:?}: {r:?}", c.name);
            assert!(!r.stderr.contains("panicked"), "{} {cmd:?}: {r:?}", c.name);
            // Hostile input must not make vhdkit allocate beyond its limits.
            if let Some(kib) = rss_kib {
                assert!(kib < 128 * 1024, "{} {cmd:?}: peak RSS {kib} KiB", c.name);
                max_rss = max_rss.max(kib);
            }
        }
        let after: Vec<String> = c
            .files
            .iter()
            .map(|(n, _)| sha256_file(&dir.join(n)))
            .collect();
        assert_eq!(before, after, "{}: a file changed", c.name);
        n += 1;
    }
    println!("{n} cases through the binary; highest peak RSS of info/chain/convert: {max_rss} KiB");
    assert!(n >= 30);
}

#[test]
fn real_images_are_clean_except_known_faults() {
    let Some(real) = vhdkit_testkit::real_data_dir("check on real images") else {
        return;
    };
    let t = tmp();
    for rel in [
        "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        "qemu-iotests/iotest-dynamic-1G.vhdx.bz2",
        "qemu-iotests/test-disk2vhd.vhdx.bz2",
        "qemu-iotests/hyperv2012r2-dynamic.vhd.bz2",
        "qemu-iotests/virtualpc-dynamic.vhd.bz2",
        "qemu-iotests/d2v-zerofilled.vhd.bz2",
        "dissect.hypervisor/differencing.avhdx.gz",
        "dissect.hypervisor/fixed.vhdx.gz",
        "dissect.hypervisor/dynamic.vhdx.gz",
        "dissect.hypervisor/fixed.vhd.gz",
        "dissect.hypervisor/dynamic.vhd.gz",
        "dfvfs/fat-differential.vhd.gz",
        "dfvfs/image-differential.vhd.gz",
        "dfvfs/image.vhd.gz",
        "dfvfs/ext2.vhd.gz",
        "node-vhd/dynamic.vhd.gz",
        "node-vhd/fixed.vhd.gz",
        "imhex-patterns/vhd.hexpat.vhd.gz",
    ] {
        let p = vhdkit_testkit::unpack_real(&real, rel, t.path());
        let r = run(["check", "--json", p.to_str().unwrap()]);
        let found = codes(&r.json());
        let expected: &[&str] = if rel.contains("dirtylog") {
            &["vhdx.log.dirty"]
        } else if rel.contains("image-differential") {
            &[
                "vhd.footer.checksum",
                "vhd.footer_copy.checksum",
                "vhd.header.checksum",
            ]
        } else if rel.contains("dfvfs/image.vhd") {
            &["vhd.footer.checksum", "vhd.footer_copy.checksum"]
        } else {
            &[]
        };
        assert_eq!(found, expected, "{rel}");
        assert_eq!(r.code, i32::from(!expected.is_empty()), "{rel}");
        println!("{rel}: {found:?}");
    }
}

/// qemu-img check's verdict on a VHDX: true when it reports corruption or cannot open it.
fn qemu_says_bad(p: &Path) -> bool {
    let o = std::process::Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(p)
        .output()
        .unwrap();
    !o.status.success()
}

#[test]
fn agrees_with_qemu_img_check_on_vhdx() {
    if !have_tool("qemu-img", "compare check with qemu-img check") {
        return;
    }
    let t = tmp();
    // Clean files from qemu and from vhdkit: both clean.
    let q = t.path().join("q.vhdx");
    qemu_create("vhdx", "block_size=8M", &q, "1G");
    qemu_io("vhdx", &q, &["write -P 0xab 0 12M", "write 700M 1M"]);
    let qf = t.path().join("qf.vhdx");
    qemu_create("vhdx", "subformat=fixed", &qf, "16M");
    // Every kind of file vhdkit creates or converts: check is clean, and so is qemu-img check
    // wherever qemu can check it (VHDX with 512-byte logical sectors, not differencing).
    let mut made: Vec<(std::path::PathBuf, bool)> = Vec::new();
    let mk = |name: &str, args: &[&str]| {
        let p = t.path().join(name);
        let mut a = vec!["create"];
        a.extend_from_slice(args);
        a.push(p.to_str().unwrap());
        let r = run(a);
        assert_eq!(r.code, 0, "{r:?}");
        p
    };
    made.push((mk("vd.vhd", &["--size", "64M"]), false));
    made.push((mk("vf.vhd", &["--fixed", "--size", "8M"]), false));
    for ls in ["512", "4096"] {
        let q_ok = ls == "512";
        let base = mk(
            &format!("xd{ls}.vhdx"),
            &["--size", "1G", "--logical-sector-size", ls],
        );
        made.push((base.clone(), q_ok));
        made.push((
            mk(
                &format!("xf{ls}.vhdx"),
                &["--fixed", "--size", "16M", "--logical-sector-size", ls],
            ),
            q_ok,
        ));
        let child = t.path().join(format!("xc{ls}.avhdx"));
        let r = run([
            "create",
            child.to_str().unwrap(),
            "--parent",
            base.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        made.push((child, false));
    }
    // Converted and written files: qemu's image converted by vhdkit to both formats.
    for (ext, q_ok) in [("vhd", false), ("vhdx", true)] {
        let out = t.path().join(format!("conv.{ext}"));
        let r = run([
            "convert",
            "--to",
            ext,
            q.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        made.push((out, q_ok));
    }
    for (p, q_ok) in &made {
        if *q_ok {
            assert!(!qemu_says_bad(p), "qemu-img check flags {}", p.display());
        }
        let r = run(["check", "--chain", p.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}: {r:?}", p.display());
    }
    for p in [&q, &qf] {
        assert!(!qemu_says_bad(p), "{}", p.display());
        let r = run(["check", p.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}: {r:?}", p.display());
    }
    // Every VHDX corpus case: whatever qemu-img check flags, vhdkit check flags too.
    let mut flagged = 0;
    for (i, c) in cases(false).iter().enumerate() {
        if c.chain || !c.files[0].0.ends_with("vhdx") {
            continue;
        }
        let p = t.path().join(format!("c{i}.vhdx"));
        std::fs::write(&p, &c.files[0].1).unwrap();
        let qbad = qemu_says_bad(&p);
        let r = run(["check", "--json", p.to_str().unwrap()]);
        let ours = problems(&r.json()) > 0;
        if qbad {
            flagged += 1;
            assert!(
                ours,
                "{}: qemu-img check flags it, vhdkit check does not",
                c.name
            );
        }
        println!(
            "{:<34} qemu-img check: {} vhdkit: {}",
            c.name,
            if qbad { "bad" } else { "ok" },
            if ours { "findings" } else { "clean" }
        );
        let _ = std::fs::remove_file(&p);
    }
    println!("{flagged} cases flagged by qemu-img check, all found by vhdkit check");
    assert!(flagged > 10);
}

#[test]
fn folders_recurse_by_signature_and_exit_codes() {
    let t = tmp();
    let sub = t.path().join("a").join("b");
    std::fs::create_dir_all(&sub).unwrap();
    let d = sub.join("disk.bin");
    let r = run([
        "create",
        "--format",
        "vhd",
        "--size",
        "8M",
        d.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    std::fs::write(t.path().join("notes.txt"), b"not a disk").unwrap();
    let r = run(["check", "--json", t.path().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let files = j["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{j}");
    assert!(files[0]["path"].as_str().unwrap().ends_with("disk.bin"));
    // A path that does not exist: could not run.
    let r = run(["check", t.path().join("nope.vhd").to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    // A named file that is not a disk: a finding.
    let r = run(["check", t.path().join("notes.txt").to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("file.not_a_disk"), "{r:?}");
}

/// Issue 7: `check` flags a dead locator (exit 1), `repair --dry-run` says what it would drop
/// and writes nothing, `repair` drops it (exit 0, then `check` is clean); with no working
/// locator `repair` changes nothing and exits 1.
#[test]
fn dead_locators_check_and_repair() {
    use vhdkit_testkit::vhd::{Locator, VhdBuilder};
    const PID: [u8; 16] = *b"parent-identity!";
    let t = tmp();
    VhdBuilder::dynamic(4 << 20)
        .unique_id(PID)
        .build()
        .write_to(&t.path().join("parent.vhd"));
    let child = |name: &str, rel: &str| {
        let p = t.path().join(name);
        VhdBuilder::differencing(4 << 20, PID)
            .locator(Locator::w2ru(rel))
            .locator(Locator::wi2r(r".\elsewhere\parent.vhd"))
            .build()
            .write_to(&p);
        p
    };
    let good = child("good.vhd", r".\parent.vhd");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let r = run(["check", "--json", &s(&good)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(codes(&r.json()).contains(&"vhd.locator.dead".to_string()));
    let h = sha256_file(&good);
    let r = run(["repair", "--dry-run", &s(&good)]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("would drop locator 1 (Wi2r)"), "{r:?}");
    assert_eq!(sha256_file(&good), h);
    let r = run(["repair", &s(&good)]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(sha256_file(&good), h);
    assert_eq!(run(["check", &s(&good)]).code, 0);

    let bad = child("bad.vhd", r".\missing.vhd");
    let h = sha256_file(&bad);
    let r = run(["repair", &s(&bad)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("chain.parent_missing"), "{r:?}");
    assert_eq!(sha256_file(&bad), h);
}
