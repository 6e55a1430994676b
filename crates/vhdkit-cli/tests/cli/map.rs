//! `vhdkit map`: runs against `qemu-img map` on standalone VHDs made by qemu, and on chains
//! against what the test wrote into each layer.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vhdkit::{ChainOptions, WritableDisk};

use crate::util::*;

/// Where layer `i` (0 = base) writes its own bytes: a sector-odd run in a block of its own,
/// plus an overwrite of the start of the layer below (which the map must attribute to `i`).
pub fn layer_writes(i: usize) -> Vec<(u64, Vec<u8>)> {
    let i64 = i as u64;
    let own = (
        i64 * (4 << 20) + 512 * (i64 + 1),
        vec![(i as u8) + 1; 3 * 512 + 4096],
    );
    let mut w = vec![own];
    if i > 0 {
        let below = (i64 - 1) * (4 << 20) + 512 * i64;
        w.push((below, vec![0xe0 | i as u8; 1024]));
    }
    w
}

/// A chain of `depth` disks of format `ext` ("vhd" or "vhdx", 64 MiB, 1 MiB blocks) in `dir`,
/// each layer written with `layer_writes`; the paths, base first.
pub fn build_chain(dir: &Path, ext: &str, depth: usize) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for i in 0..depth {
        let path = dir.join(format!("layer{i}.{ext}"));
        let path_s = path.to_str().unwrap().to_string();
        match paths.last() {
            None => run_success(["create", "--size", "64M", "--block-size", "1M", &path_s]),
            Some(parent) => run_success(["create", "--parent", parent.to_str().unwrap(), &path_s]),
        };
        let mut w = WritableDisk::open(&path, &ChainOptions::default()).unwrap();
        for (off, data) in layer_writes(i) {
            w.write_at(off, &data).unwrap();
        }
        w.close().unwrap();
        paths.push(path);
    }
    paths
}

fn map_json(file: &Path) -> Vec<Value> {
    let r = run_success(["map".as_ref(), "--json".as_ref(), file.as_os_str()]);
    match r.json() {
        Value::Array(a) => a,
        v => panic!("not an array: {v}"),
    }
}

/// The run holding virtual offset `at`.
fn run_at(map: &[Value], at: u64) -> &Value {
    map.iter()
        .find(|e| {
            let s = e["start"].as_u64().unwrap();
            s <= at && at < s + e["length"].as_u64().unwrap()
        })
        .unwrap_or_else(|| panic!("no run holds {at:#x}"))
}

/// Runs tile the disk without gaps or overlaps.
fn assert_tiles(map: &[Value], size: u64) {
    let mut pos = 0;
    for e in map {
        assert_eq!(e["start"].as_u64().unwrap(), pos, "{e}");
        let len = e["length"].as_u64().unwrap();
        assert!(len > 0);
        pos += len;
    }
    assert_eq!(pos, size);
}

fn chain_map(ext: &str, depth: usize) {
    let d = tmp();
    let paths = build_chain(d.path(), ext, depth);
    let top = paths.last().unwrap();
    let map = map_json(top);
    assert_tiles(&map, 64 << 20);
    for (i, path) in paths.iter().enumerate() {
        let want_depth = (depth - 1 - i) as u64;
        // The layer's own run, except where the layer above overwrote its first KiB.
        let (off, data) = &layer_writes(i)[0];
        let at = off + data.len() as u64 - 1;
        let e = run_at(&map, at);
        assert_eq!(
            e["file"].as_str().unwrap(),
            path.to_str().unwrap(),
            "{ext} {i}: {e}"
        );
        assert_eq!(e["depth"].as_u64().unwrap(), want_depth, "{e}");
        assert_eq!(
            (e["data"].as_bool(), e["zero"].as_bool()),
            (Some(true), Some(false))
        );
        assert!(e["offset"].as_u64().is_some(), "{e}");
        if i + 1 < depth {
            let (over, _) = &layer_writes(i + 1)[1];
            let e = run_at(&map, *over);
            assert_eq!(
                e["depth"].as_u64().unwrap(),
                want_depth - 1,
                "overwrite of {i}: {e}"
            );
        }
    }
    // Nothing wrote past the last layer's block: a hole, held by no file.
    let e = run_at(&map, 60 << 20);
    assert_eq!(
        (e["data"].as_bool(), e["zero"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(e["present"].as_bool(), Some(false));
    assert!(e.get("file").is_none() && e.get("offset").is_none(), "{e}");
    // The text table has a line per run plus its header.
    let text = run_success(["map".as_ref(), top.as_os_str()]);
    assert_eq!(
        text.stdout.lines().count(),
        map.len() + 1,
        "{}",
        text.stdout
    );
}

#[test]
fn chain_vhdx_depths() {
    for depth in 1..=5 {
        chain_map("vhdx", depth);
    }
}

#[test]
fn chain_vhd_depths() {
    for depth in 1..=5 {
        chain_map("vhd", depth);
    }
}

/// (start, length, zero, data) with adjacent runs that say the same merged: qemu splits data
/// runs where vhdkit does not and the other way round only where file offsets jump.
fn normalized(map: &[Value]) -> Vec<(u64, u64, bool, bool)> {
    let mut out: Vec<(u64, u64, bool, bool)> = Vec::new();
    for e in map {
        let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let (z, d) = (e["zero"].as_bool().unwrap(), e["data"].as_bool().unwrap());
        match out.last_mut() {
            Some(last) if last.2 == z && last.3 == d && last.0 + last.1 == s => last.1 += l,
            _ => out.push((s, l, z, d)),
        }
    }
    out
}

/// qemu's VHD driver reports block status (qemu's VHDX driver reports every byte as data, so it
/// is no oracle for VHDX maps; the chain tests above check those).
#[test]
fn dynamic_vhd_matches_qemu_img_map() {
    if !have_tool("qemu-img", "map vs qemu-img map") || !have_tool("qemu-io", "map vs qemu") {
        return;
    }
    let d = tmp();
    let img = p(d.path(), "disk.vhd");
    qemu_create("vpc", "subformat=dynamic", &img, "64M");
    qemu_io(
        "vpc",
        &img,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 3M 512",
            "write -P 0x33 31M 3M",
            "write -P 0x44 63M 1M",
        ],
    );
    let out = std::process::Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "vpc"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let qemu: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours = map_json(&img);
    assert_eq!(normalized(&ours), normalized(&qemu));
    // Offsets agree on every data run qemu reports.
    for q in qemu.iter().filter(|q| q["data"].as_bool() == Some(true)) {
        let start = q["start"].as_u64().unwrap();
        let o = run_at(&ours, start);
        let delta = start - o["start"].as_u64().unwrap();
        assert_eq!(
            o["offset"].as_u64().map(|x| x + delta),
            q["offset"].as_u64(),
            "{q}"
        );
    }
}

/// A 64 TiB sparse VHDX maps as one hole, quickly.
#[test]
fn huge_sparse_vhdx_is_one_run() {
    let d = tmp();
    let img = p(d.path(), "big.vhdx");
    run_success(["create", "--size", "64T", img.to_str().unwrap()]);
    let map = map_json(&img);
    assert_eq!(map.len(), 1);
    assert_eq!(map[0]["length"].as_u64(), Some(64 << 40));
    assert_eq!(map[0]["zero"].as_bool(), Some(true));
}
