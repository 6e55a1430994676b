//! The real images in `../shared/testdata-real` (see its SOURCES.md): `vhdkit convert` must
//! equal `qemu-img convert` (after `qemu-img check -r all` replays a dirty log, on a copy), and
//! `vhdkit info --json` must report what SOURCES.md records.

use std::path::Path;
use std::process::Command;

use vhdkit_testkit::{real_data_dir, unpack_real};

use crate::util::*;

/// Compare two files chunk by chunk, up to `limit` bytes (cheaper than hashing multi-GiB
/// sparse files).
fn same_contents(a: &Path, b: &Path, limit: u64) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut done = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 || done >= limit {
            return true;
        }
        done += n as u64;
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

struct Case {
    rel: &'static str,
    qemu_fmt: &'static str,
    format: &'static str,
    disk_type: &'static str,
    virtual_size: u64,
    block_size: Option<u64>,
    id: &'static str,
    sectors: (u64, u64),
}

const CASES: &[Case] = &[
    Case {
        rel: "dissect.hypervisor/fixed.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "fixed",
        virtual_size: 10485760,
        block_size: None,
        id: "b895e418-3894-e744-9a88-9a420be4e5ca",
        sectors: (512, 512),
    },
    Case {
        rel: "dissect.hypervisor/dynamic.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 10485760,
        block_size: Some(2 << 20),
        id: "4b6a0d04-f946-d74e-836f-d3dc87e1816b",
        sectors: (512, 512),
    },
    Case {
        rel: "node-vhd/fixed.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "fixed",
        virtual_size: 10485760,
        block_size: None,
        id: "71a5d438-d9d5-f44b-8d26-726a7e7ef18e",
        sectors: (512, 512),
    },
    Case {
        rel: "node-vhd/dynamic.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 536870912,
        block_size: Some(2 << 20),
        id: "f72cad7b-cc05-a04c-8db3-da4ce981ce29",
        sectors: (512, 512),
    },
    Case {
        rel: "imhex-patterns/vhd.hexpat.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "fixed",
        virtual_size: 3145728,
        block_size: None,
        id: "7ed7879a-4fbd-9a41-b16d-9503f2fb35c7",
        sectors: (512, 512),
    },
    Case {
        rel: "dfvfs/ext2.vhd.gz",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 4212736,
        block_size: Some(2 << 20),
        id: "b61f53ca-a786-4528-90e2-55ba791a1c4c",
        sectors: (512, 512),
    },
    Case {
        rel: "qemu-iotests/d2v-zerofilled.vhd.bz2",
        qemu_fmt: "vpc",
        format: "vhd",
        disk_type: "dynamic",
        virtual_size: 263454720,
        block_size: Some(2 << 20),
        id: "e7b829fd-e66d-ba49-ac19-6ebdab26cea3",
        sectors: (512, 512),
    },
    Case {
        rel: "dissect.hypervisor/fixed.vhdx.gz",
        qemu_fmt: "vhdx",
        format: "vhdx",
        disk_type: "fixed",
        virtual_size: 10485760,
        block_size: Some(2 << 20),
        id: "bfc189a1-751c-44ff-b60f-98d07b2950c0",
        sectors: (512, 4096),
    },
    Case {
        rel: "dissect.hypervisor/dynamic.vhdx.gz",
        qemu_fmt: "vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10485760,
        block_size: Some(32 << 20),
        id: "28e09ae1-ab94-4815-a155-f143e2d00a3f",
        sectors: (512, 4096),
    },
    Case {
        rel: "qemu-iotests/iotest-dynamic-1G.vhdx.bz2",
        qemu_fmt: "vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 1 << 30,
        block_size: Some(32 << 20),
        id: "d247cbb2-15b6-404b-9133-790733d694c0",
        sectors: (512, 4096),
    },
    Case {
        rel: "qemu-iotests/test-disk2vhd.vhdx.bz2",
        qemu_fmt: "vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 256 << 20,
        block_size: Some(2 << 20),
        id: "fd03891c-29e5-4ad6-8ee1-7198d3b1e263",
        sectors: (512, 512),
    },
    // Dirty log: the id is the DataWriteGuid of the current header before replay.
    Case {
        rel: "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        qemu_fmt: "vhdx",
        format: "vhdx",
        disk_type: "dynamic",
        virtual_size: 10 << 30,
        block_size: Some(1 << 20),
        id: "5ab1b2ee-2f64-2e40-8a9b-0f0bcfdcd544",
        sectors: (512, 512),
    },
];

#[test]
fn real_images_info_and_convert_match_qemu() {
    let Some(real) = real_data_dir("real images vs qemu-img") else {
        return;
    };
    if !have_tool("qemu-img", "real images vs qemu-img") {
        return;
    }
    for c in CASES {
        let d = tmp();
        let img = unpack_real(&real, c.rel, d.path());
        let before = sha256_file(&img);
        let info = run_success(["info".as_ref(), "--json".as_ref(), img.as_os_str()]).json();
        assert_eq!(info["format"], c.format, "{}", c.rel);
        assert_eq!(info["disk_type"], c.disk_type, "{}", c.rel);
        assert_eq!(info["virtual_size"], c.virtual_size, "{}", c.rel);
        assert_eq!(info["block_size"].as_u64(), c.block_size, "{}", c.rel);
        assert_eq!(info["id"], c.id, "{}", c.rel);
        assert_eq!(info["logical_sector_size"], c.sectors.0, "{}", c.rel);
        assert_eq!(info["physical_sector_size"], c.sectors.1, "{}", c.rel);
        assert!(info["parent"].is_null(), "{}", c.rel);

        let ours = d.path().join("vhdkit.raw");
        run_success([
            "convert".as_ref(),
            "--to".as_ref(),
            "raw".as_ref(),
            img.as_os_str(),
            ours.as_os_str(),
        ]);
        // vhdkit never writes to its input, even one with a dirty log.
        assert_eq!(sha256_file(&img), before, "{}: input modified", c.rel);

        let qsrc = d.path().join(format!("qemu-copy.{}", c.format));
        std::fs::copy(&img, &qsrc).unwrap();
        if c.rel.contains("dirtylog") {
            // qemu refuses to read a dirty log read-only; let it replay on a copy. It reports
            // the replay as a repaired corruption and exits 0 once the copy is consistent.
            let out = run_ok(
                Command::new("qemu-img")
                    .args(["check", "-r", "all", "-f", "vhdx"])
                    .arg(&qsrc),
            );
            assert!(
                out.contains("repaired"),
                "{}: qemu replayed nothing: {out}",
                c.rel
            );
        }
        let theirs = d.path().join("qemu.raw");
        qemu_to_raw(c.qemu_fmt, &qsrc, &theirs);
        // The 10 GiB dirty-log image holds data only below 18 MiB (SOURCES.md): compare its
        // first 64 MiB and check the rest of ours is holes, instead of reading 10 GiB twice.
        let limit = if c.virtual_size > 2 << 30 {
            assert!(
                allocated_bytes(&ours) < 64 << 20,
                "{}: output not sparse",
                c.rel
            );
            64 << 20
        } else {
            u64::MAX
        };
        assert!(
            same_contents(&ours, &theirs, limit),
            "{}: vhdkit and qemu-img disagree",
            c.rel
        );
    }
}

#[test]
fn dirty_log_is_reported_and_replayed_in_memory() {
    let Some(real) = real_data_dir("dirty log info") else {
        return;
    };
    let d = tmp();
    let img = unpack_real(
        &real,
        "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        d.path(),
    );
    let r = run_success(["info".as_ref(), "--json".as_ref(), img.as_os_str()]);
    let j = r.json();
    assert_eq!(j["log"]["state"], "replayed_in_memory", "{}", r.stdout);
    assert!(j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("log")));
    let text = run_success(["info".as_ref(), img.as_os_str()]);
    assert!(
        text.stdout.contains("replayed in memory"),
        "{}",
        text.stdout
    );
}

#[test]
fn real_windows_differencing_children_report_their_locators() {
    let Some(real) = real_data_dir("real differencing children") else {
        return;
    };
    let d = tmp();
    let vhdx = unpack_real(&real, "dissect.hypervisor/differencing.avhdx.gz", d.path());
    let j = run_success(["info".as_ref(), "--json".as_ref(), vhdx.as_os_str()]).json();
    assert_eq!(j["disk_type"], "differencing");
    assert_eq!(j["parent"]["id"], "ff34003b-11ed-4cf8-a166-b2be05e20b80");
    let kinds: Vec<&str> = j["parent"]["locators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["relative_path", "volume_path", "absolute_win32_path"]
    );
    assert_eq!(
        j["parent"]["locators"][0]["path"],
        r".\Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx"
    );
    // Its parent is not published: chain is broken, and says what it tried.
    let r = run(["chain".as_ref(), vhdx.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("Generation 1_49C4BAF3"), "{r:?}");

    let vhd = unpack_real(&real, "dfvfs/fat-differential.vhd.gz", d.path());
    let j = run_success(["info".as_ref(), "--json".as_ref(), vhd.as_os_str()]).json();
    assert_eq!(j["parent"]["id"], "5fa21a55-f394-aa4d-9958-1951a67d5540");
    let locs = j["parent"]["locators"].as_array().unwrap();
    assert_eq!(locs[0]["kind"], "W2ru");
    assert_eq!(locs[0]["path"], r".\fat-parent.vhd");
    assert_eq!(locs[1]["kind"], "W2ku");
    assert_eq!(
        locs[1]["path"],
        r"C:\Projects\dfvfs\test_data\fat-parent.vhd"
    );
}

#[test]
fn bad_checksums_fail_with_one_line_naming_the_structure() {
    let Some(real) = real_data_dir("bad checksum images") else {
        return;
    };
    let d = tmp();
    for rel in ["dfvfs/image.vhd.gz", "dfvfs/image-differential.vhd.gz"] {
        let img = unpack_real(&real, rel, d.path());
        let r = run(["info".as_ref(), img.as_os_str()]);
        assert_eq!(r.code, 2, "{rel}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{rel}: {r:?}");
        assert!(r.stderr.contains("checksum"), "{rel}: {r:?}");
        assert!(r.stderr.contains("offset 0x"), "{rel}: {r:?}");
    }
}
