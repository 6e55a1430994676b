//! Differencing chains of depth 1 to 5, in both formats, built by the testkit's independent
//! writers: `vhdkit chain` must find every parent, `vhdkit convert` must read exactly what the
//! format says (checked against an in-memory model), and an independent reader (libvhdi) must
//! agree where it is reliable.

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vhdkit_testkit::oracle::pyvhdi_chain_sha256;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
use vhdkit_testkit::{sha256, Rng};

use crate::util::*;

const MIB: u64 = 1 << 20;

/// Random sector-granular writes; `align` sectors of alignment for offsets and lengths.
fn random_writes(
    rng: &mut Rng,
    size: u64,
    n: usize,
    align: u64,
    sector: u64,
) -> Vec<(u64, Vec<u8>)> {
    let unit = align * sector;
    (0..n)
        .map(|_| {
            let units = size / unit;
            let start = rng.below(units);
            let len = (1 + rng.below(24)).min(units - start);
            let mut data = vec![0u8; (len * unit) as usize];
            rng.fill(&mut data);
            (start * unit, data)
        })
        .collect()
}

fn apply(model: &mut [u8], off: u64, data: &[u8]) {
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// Builds a VHD chain of `depth` disks in separate folders; returns paths (child first) and
/// the expected virtual contents.
fn vhd_chain(dir: &Path, depth: usize, seed: u64, align: u64) -> (Vec<PathBuf>, Vec<u8>) {
    let size = 12 * MIB;
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; size as usize];
    let mut paths = Vec::new();
    let mut parent: Option<([u8; 16], String)> = None;
    for level in 0..depth {
        let folder = dir.join(format!("L{level}"));
        std::fs::create_dir_all(&folder).unwrap();
        let name = format!("disk{level}.vhd");
        let id = *Uuid::from_u128(0xd15c_0000 + level as u128 + (seed as u128) * 1000).as_bytes();
        let mut b = match &parent {
            None => VhdBuilder::dynamic(size),
            Some((pid, pname)) => VhdBuilder::differencing(size, *pid)
                .parent_name(pname)
                .locator(Locator::w2ku(&format!(r"C:\Nowhere\{pname}")))
                .locator(Locator::w2ru(&format!(r"..\L{}\{pname}", level - 1))),
        }
        .unique_id(id);
        for (off, data) in random_writes(&mut rng, size, 40, align, 512) {
            b.write(off, &data);
            apply(&mut model, off, &data);
        }
        let path = folder.join(&name);
        b.build().write_to(&path);
        paths.push(path);
        parent = Some((id, name));
    }
    paths.reverse();
    (paths, model)
}

/// The same for VHDX, with the given logical sector size.
fn vhdx_chain(dir: &Path, depth: usize, seed: u64, sector: u32) -> (Vec<PathBuf>, Vec<u8>) {
    let size = 12 * MIB;
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; size as usize];
    let mut paths = Vec::new();
    let mut parent: Option<(Uuid, String)> = None;
    for level in 0..depth {
        let folder = dir.join(format!("L{level}"));
        std::fs::create_dir_all(&folder).unwrap();
        let name = format!("disk{level}.vhdx");
        let kind = if parent.is_some() {
            Kind::Differencing
        } else {
            Kind::Dynamic
        };
        let mut b = VhdxBuilder::new(kind, size, MIB as u32, sector);
        b.data_write_guid = Uuid::from_u128(0xda7a_0000 + level as u128 + (seed as u128) * 1000);
        if let Some((pid, pname)) = &parent {
            b.parent_linkage = *pid;
            b.relative_path = Some(format!(r"..\L{}\{pname}", level - 1));
            b.absolute_win32_path = Some(format!(r"C:\Nowhere\{pname}"));
        }
        for (off, data) in random_writes(&mut rng, size, 40, 1, u64::from(sector)) {
            b.write(off, &data);
            apply(&mut model, off, &data);
        }
        let path = folder.join(&name);
        std::fs::write(&path, b.build().bytes).unwrap();
        paths.push(path);
        parent = Some((b.data_write_guid, name));
    }
    paths.reverse();
    (paths, model)
}

fn check_chain(paths: &[PathBuf], model: &[u8], oracle: bool) {
    let child = &paths[0];
    let r = run_success(["chain".as_ref(), "--json".as_ref(), child.as_os_str()]);
    let j = r.json();
    assert_eq!(j["intact"], true, "{}", r.stdout);
    let links = j["links"].as_array().unwrap();
    assert_eq!(links.len(), paths.len());
    for (l, p) in links.iter().zip(paths) {
        assert_eq!(
            Path::new(l["path"].as_str().unwrap())
                .canonicalize()
                .unwrap(),
            p.canonicalize().unwrap()
        );
    }
    let d = tmp();
    let raw = d.path().join("out.raw");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        child.as_os_str(),
        raw.as_os_str(),
    ]);
    let got = std::fs::read(&raw).unwrap();
    assert_eq!(got.len(), model.len());
    if got != model {
        let first = got.iter().zip(model).position(|(a, b)| a != b).unwrap();
        panic!(
            "virtual contents differ from the model first at byte {first} (sector {})",
            first / 512
        );
    }
    if oracle {
        let chain: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        if let Some((hash, size)) = pyvhdi_chain_sha256(&chain) {
            assert_eq!(size, model.len() as u64);
            assert_eq!(hash, sha256(model), "libvhdi disagrees");
        }
    }
}

#[test]
fn vhd_chains_depth_1_to_5_sub_byte_writes() {
    for depth in 1..=5 {
        let d = tmp();
        // Single-sector alignment: writes start and end inside bitmap bytes.
        let (paths, model) = vhd_chain(d.path(), depth, depth as u64, 1);
        // libvhdi misreads such bytes (ORACLES.md), so the model alone is the reference.
        check_chain(&paths, &model, false);
    }
}

#[test]
fn vhd_chains_depth_1_to_5_checked_by_libvhdi() {
    for depth in 1..=5 {
        let d = tmp();
        // 8-sector alignment: whole bitmap bytes, which libvhdi reads right.
        let (paths, model) = vhd_chain(d.path(), depth, 100 + depth as u64, 8);
        check_chain(&paths, &model, true);
    }
}

#[test]
fn vhdx_chains_depth_1_to_5_512_and_4096_sectors() {
    for sector in [512u32, 4096] {
        for depth in 1..=5 {
            let d = tmp();
            let (paths, model) = vhdx_chain(d.path(), depth, 200 + depth as u64, sector);
            check_chain(&paths, &model, true);
        }
    }
}

#[test]
fn missing_parent_is_reported_with_every_path_tried() {
    let d = tmp();
    let (paths, _) = vhd_chain(d.path(), 3, 7, 1);
    std::fs::rename(&paths[1], d.path().join("moved.vhd")).unwrap();
    let r = run(["chain".as_ref(), paths[0].as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("BROKEN"), "{r:?}");
    assert!(r.stderr.contains("not found"), "{r:?}");
    assert!(r.stderr.contains("W2ru"), "{r:?}");
    // convert refuses a broken chain with exit 2 and one line
    let out = d.path().join("x.raw");
    let r = run([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        paths[0].as_os_str(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(!out.exists());
    // --search finds it by name in another folder... under its original name only.
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(d.path().join("moved.vhd"), elsewhere.join("disk1.vhd")).unwrap();
    let r = run([
        "chain".as_ref(),
        "--search".as_ref(),
        elsewhere.as_os_str(),
        paths[0].as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("found via search"), "{r:?}");
}

#[test]
fn identity_mismatch_is_refused() {
    let d = tmp();
    let (paths, _) = vhdx_chain(d.path(), 2, 9, 512);
    // Replace the parent with a different disk of the same name.
    let mut other = VhdxBuilder::new(Kind::Dynamic, 12 * MIB, MIB as u32, 512);
    other.data_write_guid = Uuid::from_u128(0xbad);
    std::fs::write(&paths[1], other.build().bytes).unwrap();
    let r = run(["chain".as_ref(), "--json".as_ref(), paths[0].as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["intact"], false);
    let tried = j["links"][0]["parent"]["tried"].as_array().unwrap();
    assert!(
        tried
            .iter()
            .any(|t| t["outcome"].as_str().unwrap().contains("id mismatch")),
        "{}",
        r.stdout
    );
}

#[test]
fn loops_are_refused() {
    let d = tmp();
    let a_id = *Uuid::from_u128(0xa).as_bytes();
    let b_id = *Uuid::from_u128(0xb).as_bytes();
    VhdBuilder::differencing(4 * MIB, b_id)
        .unique_id(a_id)
        .locator(Locator::w2ru(r".\b.vhd"))
        .build()
        .write_to(&d.path().join("a.vhd"));
    VhdBuilder::differencing(4 * MIB, a_id)
        .unique_id(b_id)
        .locator(Locator::w2ru(r".\a.vhd"))
        .build()
        .write_to(&d.path().join("b.vhd"));
    let r = run(["chain".as_ref(), d.path().join("a.vhd").as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("loop"), "{r:?}");
}

#[test]
fn windows_prefix_map_resolves_absolute_locators() {
    let d = tmp();
    let (paths, model) = vhdx_chain(d.path(), 2, 11, 512);
    // Move the child away so its relative path no longer works; map C:\Nowhere to the parent's folder.
    let away = d.path().join("away").join("deeper");
    std::fs::create_dir_all(&away).unwrap();
    let child = away.join("child.vhdx");
    std::fs::rename(&paths[0], &child).unwrap();
    let r = run(["chain".as_ref(), child.as_os_str()]);
    assert_eq!(r.code, 1, "{r:?}");
    let map = format!(r"c:\NOWHERE={}", paths[1].parent().unwrap().display());
    let r = run([
        "chain".as_ref(),
        "--map".as_ref(),
        map.as_ref(),
        child.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("found via absolute_win32_path"), "{r:?}");
    check_chain_with(&[child, paths[1].clone()], &model, &["--map", &map]);
}

fn check_chain_with(paths: &[PathBuf], model: &[u8], extra: &[&str]) {
    let d = tmp();
    let raw = d.path().join("out.raw");
    let mut args: Vec<std::ffi::OsString> = vec!["convert".into(), "--to".into(), "raw".into()];
    args.extend(extra.iter().map(Into::into));
    args.push(paths[0].clone().into());
    args.push(raw.clone().into());
    run_success(args);
    assert!(
        std::fs::read(&raw).unwrap() == model,
        "contents differ from the model"
    );
}

#[test]
fn bundled_lab_chains_are_intact() {
    let lab = vhdkit_testkit::testdata_dir().join("lab");
    for child in ["vm1/disk.vhd", "vm1/disk.vhdx"] {
        let r = run_success(["chain".as_ref(), lab.join(child).as_os_str()]);
        assert!(r.stdout.contains("chain of 2 disks: intact"), "{r:?}");
    }
}

#[test]
fn parent_linkage2_and_volume_path_map() {
    let d = tmp();
    let lab = d.path().join("Lab");
    std::fs::create_dir(&lab).unwrap();
    let mut base = VhdxBuilder::new(Kind::Dynamic, 4 * MIB, MIB as u32, 512);
    base.data_write_guid = Uuid::from_u128(0xba5e_0001);
    base.write(0, &[0x42; 4096]);
    std::fs::write(lab.join("base.vhdx"), base.build().bytes).unwrap();
    let mut child = VhdxBuilder::new(Kind::Differencing, 4 * MIB, MIB as u32, 512);
    child.data_write_guid = Uuid::from_u128(0xc41d);
    // The primary linkage is stale (as during a merge); parent_linkage2 names the base.
    child.parent_linkage = Uuid::from_u128(0x0517a1e);
    child.parent_linkage2 = Some(base.data_write_guid);
    child.relative_path = Some(r".\gone\base.vhdx".into());
    child.volume_path =
        Some(r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\Lab\base.vhdx".into());
    child.absolute_win32_path = None;
    let other = d.path().join("vm");
    std::fs::create_dir(&other).unwrap();
    let cpath = other.join("child.avhdx");
    std::fs::write(&cpath, child.build().bytes).unwrap();
    let map = format!(
        r"\\?\Volume{{0EBA351E-5634-46D6-A8CF-4DDC2D6AC0B9}}\={}",
        d.path().display()
    );
    let r = run([
        "chain".as_ref(),
        "--map".as_ref(),
        map.as_ref(),
        cpath.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("found via volume_path"), "{r:?}");
    assert!(r.stdout.contains("alternate linkage ok"), "{r:?}");
    let j = run_success([
        "chain".as_ref(),
        "--json".as_ref(),
        "--map".as_ref(),
        map.as_ref(),
        cpath.as_os_str(),
    ])
    .json();
    assert_eq!(j["links"][0]["parent"]["id_match"], "alternate");
    // A parent_linkage2 naming another disk links nothing.
    child.parent_linkage2 = Some(Uuid::from_u128(0xdead));
    std::fs::write(&cpath, child.build().bytes).unwrap();
    let r = run([
        "chain".as_ref(),
        "--map".as_ref(),
        map.as_ref(),
        cpath.as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("id mismatch") || r.stderr.contains("id mismatch"),
        "{r:?}"
    );
}

#[test]
fn depth_limit_is_enforced() {
    // The library limit, exercised through the API: a chain of 5 with a limit of 3.
    let d = tmp();
    let (paths, _) = vhd_chain(d.path(), 5, 31, 1);
    let mut limits = vhdkit::Limits::default();
    limits.max_chain_depth = 3;
    let opts =
        vhdkit::ChainOptions::default().open_options(vhdkit::OpenOptions::default().limits(limits));
    let report = vhdkit::Chain::inspect(&paths[0], &opts).unwrap();
    assert!(!report.intact);
    assert!(report.broken.unwrap().to_string().contains("deeper than 3"));
    assert!(vhdkit::Chain::open(&paths[0], &opts).is_err());
    assert!(vhdkit::Chain::open(&paths[0], &vhdkit::ChainOptions::default()).is_ok());
}
