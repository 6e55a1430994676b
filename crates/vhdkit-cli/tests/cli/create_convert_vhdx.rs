//! `vhdkit create` (VHDX) and `vhdkit convert --to vhdx`: defaults, flags, and read-back through
//! qemu-img (`check` and `convert`, 512-byte logical sectors only: all qemu supports), libvhdi
//! and vhdkit.

use crate::util::*;

fn s(v: &[&str]) -> Vec<std::ffi::OsString> {
    v.iter().map(std::ffi::OsString::from).collect()
}

fn qemu_check(img: &std::path::Path) {
    let o = std::process::Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img check {}: {o:?}",
        img.display()
    );
}

#[test]
fn create_every_vhdx_type_both_sector_sizes() {
    let qemu = have_tool("qemu-img", "qemu check of created VHDXs");
    for logical in ["512", "4096"] {
        let d = tmp();
        let base = p(d.path(), "base.vhdx");
        let fixed = p(d.path(), "fixed.vhdx");
        let child = p(d.path(), "child.avhdx");
        let mut a = s(&[
            "create",
            "--size",
            "100MiB",
            "--logical-sector-size",
            logical,
        ]);
        a.push(base.clone().into());
        run_success(a);
        let mut a = s(&[
            "create",
            "--size",
            "10M",
            "--fixed",
            "--logical-sector-size",
        ]);
        a.push(logical.into());
        a.push(fixed.clone().into());
        run_success(a);
        let mut a = s(&["create", "--json", "--parent"]);
        a.push(base.clone().into());
        a.push(child.clone().into());
        let j = run_success(a).json();
        assert_eq!(j["format"], "vhdx");
        assert_eq!(j["disk_type"], "differencing");
        assert_eq!(j["block_size"], 2 << 20);
        assert_eq!(j["virtual_size"], 100 << 20);
        let info = run_success(["info".as_ref(), "--json".as_ref(), base.as_os_str()]).json();
        assert_eq!(info["disk_type"], "dynamic");
        assert_eq!(info["block_size"], 32 << 20);
        assert_eq!(info["logical_sector_size"], logical.parse::<u32>().unwrap());
        assert_eq!(info["physical_sector_size"], 4096);
        assert_eq!(info["file_size"], 4 << 20);
        assert!(info["creator"].as_str().unwrap().starts_with("vhdkit "));
        let finfo = run_success(["info".as_ref(), "--json".as_ref(), fixed.as_os_str()]).json();
        assert_eq!(finfo["disk_type"], "fixed");
        assert_eq!(finfo["leave_block_allocated"], true);
        assert_eq!(finfo["block_size"], 2 << 20);
        let cinfo = run_success(["info".as_ref(), "--json".as_ref(), child.as_os_str()]).json();
        assert_eq!(cinfo["parent"]["id"], info["id"]);
        assert_eq!(cinfo["virtual_disk_id"], info["virtual_disk_id"]);
        assert_eq!(cinfo["logical_sector_size"], info["logical_sector_size"]);
        run_success(["chain".as_ref(), child.as_os_str()]);
        if qemu && logical == "512" {
            for (img, size) in [(&base, 100u64 << 20), (&fixed, 10 << 20)] {
                qemu_check(img);
                let raw = p(d.path(), "q.raw");
                let _ = std::fs::remove_file(&raw);
                qemu_to_raw("vhdx", img, &raw);
                let data = std::fs::read(&raw).unwrap();
                assert_eq!(data.len() as u64, size);
                assert!(data.iter().all(|&b| b == 0));
            }
        }
    }
    // VHD has no 4096-byte sectors.
    let d = tmp();
    let mut a = s(&["create", "--size", "1M", "--logical-sector-size", "4096"]);
    a.push(p(d.path(), "x.vhd").into());
    assert_eq!(run(a).code, 1);
}

fn convert_check(fixed: bool) {
    if !have_tool("qemu-img", "convert --to vhdx read-back") {
        return;
    }
    let d = tmp();
    // A vhdkit-made VHD with scattered data as the source, and its raw image.
    let src = p(d.path(), "src.vhd");
    run_success([
        "create".as_ref(),
        src.as_os_str(),
        "--size".as_ref(),
        "100M".as_ref(),
    ]);
    let raw = p(d.path(), "want.raw");
    {
        let mut data = vec![0u8; 100 << 20];
        for (i, (at, len)) in [(0usize, 1 << 20), (3 << 20, 512), (70 << 20, 3 << 20)]
            .into_iter()
            .enumerate()
        {
            data[at..at + len].fill(0x11 * (i as u8 + 1));
        }
        std::fs::write(&raw, &data).unwrap();
    }
    let want_sha = sha256_file(&raw);
    let via_vhd = p(d.path(), "src2.vhd");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "vhd".as_ref(),
        raw.as_os_str(),
        via_vhd.as_os_str(),
    ]);
    for (i, input) in [&raw, &via_vhd].into_iter().enumerate() {
        let out = p(d.path(), &format!("out{i}.vhdx"));
        let mut a = s(&["convert", "--json", "--to", "vhdx"]);
        if fixed {
            a.push("--fixed".into());
        }
        a.push(input.into());
        a.push(out.clone().into());
        let j = run_success(a.clone()).json();
        assert_eq!(j["format"], "vhdx");
        assert_eq!(j["disk_type"], if fixed { "fixed" } else { "dynamic" });
        qemu_check(&out);
        assert_reads_back(&out, "vhdx", &want_sha, &format!("input {i}"));
        let info = run_success(["info".as_ref(), "--json".as_ref(), out.as_os_str()]).json();
        if !fixed {
            // 32 MiB blocks 0 and 2 hold data; 1 and 3 are all zeros: never allocated.
            assert_eq!(info["bat"]["fully_present"], 2, "{info}");
        } else {
            assert_eq!(info["bat"]["fully_present"], 50, "{info}");
        }
        assert_overwrite_refused(a, &out);
    }
}

#[test]
fn convert_to_dynamic_vhdx() {
    convert_check(false);
}

#[test]
fn convert_to_fixed_vhdx() {
    convert_check(true);
}
