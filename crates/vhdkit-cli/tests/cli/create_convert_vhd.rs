//! `vhdkit create` and `vhdkit convert --to vhd`: exit codes, refusals, and read-back through
//! qemu-img and vhdkit.

use vhdkit_testkit::snapshot::Snapshot;

use crate::util::*;

fn args<'a>(v: &'a [&'a std::ffi::OsStr]) -> impl Iterator<Item = &'a std::ffi::OsStr> {
    v.iter().copied()
}

#[test]
fn create_every_vhd_type_and_read_it_back() {
    let d = tmp();
    let base = p(d.path(), "base.vhd");
    let fixed = p(d.path(), "fixed.vhd");
    let child = p(d.path(), "child.avhd");
    run_success([
        "create".as_ref(),
        base.as_os_str(),
        "--size".as_ref(),
        "64MiB".as_ref(),
    ]);
    run_success([
        "create".as_ref(),
        fixed.as_os_str(),
        "--size".as_ref(),
        "1.5MiB".as_ref(),
        "--fixed".as_ref(),
    ]);
    let j = run_success([
        "create".as_ref(),
        child.as_os_str(),
        "--parent".as_ref(),
        base.as_os_str(),
        "--json".as_ref(),
    ])
    .json();
    assert_eq!(j["disk_type"], "differencing");
    assert_eq!(j["virtual_size"], 64 << 20);
    let info = run_success(["info".as_ref(), "--json".as_ref(), base.as_os_str()]).json();
    assert_eq!(info["disk_type"], "dynamic");
    assert_eq!(info["block_size"], 2 << 20);
    assert_eq!(info["creator_application"], "win ");
    let cinfo = run_success(["info".as_ref(), "--json".as_ref(), child.as_os_str()]).json();
    assert_eq!(cinfo["parent"]["id"], info["id"]);
    let finfo = run_success(["info".as_ref(), "--json".as_ref(), fixed.as_os_str()]).json();
    assert_eq!(finfo["virtual_size"], 3 << 19);
    run_success(["chain".as_ref(), child.as_os_str()]);
    if have_tool("qemu-img", "qemu read-back of created disks") {
        for (img, size) in [(&base, 64u64 << 20), (&fixed, 3 << 19)] {
            let raw = p(d.path(), "q.raw");
            let _ = std::fs::remove_file(&raw);
            qemu_to_raw("vpc", img, &raw);
            let data = std::fs::read(&raw).unwrap();
            assert_eq!(data.len() as u64, size);
            assert!(data.iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn create_refusals_and_errors() {
    let d = tmp();
    let a = p(d.path(), "a.vhd");
    std::fs::write(&a, b"keep").unwrap();
    let before = Snapshot::tree(d.path());
    let r = run([
        "create".as_ref(),
        a.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already exists"), "{r:?}");
    before.assert_unchanged("create over an existing file");
    let x = p(d.path(), "x.vhdx");
    // VHDX blocks are 1 MiB .. 256 MiB.
    let r = run([
        "create".as_ref(),
        x.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
        "--block-size".as_ref(),
        "64K".as_ref(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("block size"), "{r:?}");
    assert!(!x.exists());
    let b = p(d.path(), "b.vhd");
    for bad in ["1000", "12Q", "1.5"] {
        let r = run([
            "create".as_ref(),
            b.as_os_str(),
            "--size".as_ref(),
            bad.as_ref(),
        ]);
        assert_eq!(r.code, 1, "{bad}: {r:?}");
    }
    let r = run(["create".as_ref(), b.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    // --format overrides the extension.
    let img = p(d.path(), "disk.img");
    run_success([
        "create".as_ref(),
        img.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
        "--format".as_ref(),
        "vhd".as_ref(),
    ]);
    let j = run_success(["info".as_ref(), "--json".as_ref(), img.as_os_str()]).json();
    assert_eq!(
        (&j["format"], &j["disk_type"], &j["virtual_size"]),
        (&"vhd".into(), &"dynamic".into(), &(1 << 20).into()),
        "{j}"
    );
    let c = run_success(["check".as_ref(), "--json".as_ref(), img.as_os_str()]).json();
    assert_eq!(
        (&c["errors"], &c["warnings"]),
        (&0.into(), &0.into()),
        "{c}"
    );
    let r = run([
        "create".as_ref(),
        p(d.path(), "n.img").as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(!b.exists());
}

fn convert_check(fixed: bool) {
    if !have_tool("qemu-img", "convert --to vhd read-back")
        || !have_tool("qemu-io", "convert --to vhd")
    {
        return;
    }
    let d = tmp();
    // A qemu-made dynamic VHD with scattered data as the source, and its raw image.
    let src = p(d.path(), "src.vhd");
    qemu_create("vpc", "subformat=dynamic,force_size=on", &src, "67108864");
    qemu_io(
        "vpc",
        &src,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 3M 512",
            "write -P 0x11 5242880 2560",
            "write -P 0x33 31M 3M",
        ],
    );
    let want = p(d.path(), "want.raw");
    qemu_to_raw("vpc", &src, &want);
    let want_sha = sha256_file(&want);
    for (i, input) in [&src, &want].into_iter().enumerate() {
        let out = p(d.path(), &format!("out{i}.vhd"));
        let mut a: Vec<&std::ffi::OsStr> =
            vec!["convert".as_ref(), "--to".as_ref(), "vhd".as_ref()];
        if fixed {
            a.push("--fixed".as_ref());
        }
        a.push(input.as_os_str());
        a.push(out.as_os_str());
        let j = {
            let mut with_json = a.clone();
            with_json.insert(1, "--json".as_ref());
            run_success(args(&with_json)).json()
        };
        assert_eq!(j["format"], "vhd");
        assert_reads_back(&out, "vpc", &want_sha, &format!("input {i}"));
        let info = run_success(["info".as_ref(), "--json".as_ref(), out.as_os_str()]).json();
        if fixed {
            assert_eq!(info["disk_type"], "fixed");
        } else {
            assert_eq!(info["disk_type"], "dynamic");
            // 5 blocks hold data (0, 1, 2, 15, 16): the rest are never allocated.
            assert_eq!(info["dynamic"]["allocated_blocks"], 5, "{info}");
        }
        assert_overwrite_refused(args(&a), &out);
    }
}

#[test]
fn convert_to_dynamic_vhd() {
    convert_check(false);
}

#[test]
fn convert_to_fixed_vhd() {
    convert_check(true);
}

#[test]
fn convert_from_raw_forced() {
    // A raw image whose last sector happens to hold a VHD footer: --from raw copies it as data.
    let d = tmp();
    let vhd = p(d.path(), "inner.vhd");
    run_success([
        "create".as_ref(),
        vhd.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
        "--fixed".as_ref(),
    ]);
    let out = p(d.path(), "outer.vhd");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "vhd".as_ref(),
        "--from".as_ref(),
        "raw".as_ref(),
        vhd.as_os_str(),
        out.as_os_str(),
    ]);
    let info = run_success(["info".as_ref(), "--json".as_ref(), out.as_os_str()]).json();
    assert_eq!(info["virtual_size"], (1 << 20) + 512);
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        "--fixed".as_ref(),
        vhd.as_os_str(),
        p(d.path(), "x.raw").as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
}
