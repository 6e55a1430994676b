//! Durable and `no_sync` conversions to a path: the output is byte-exact whichever way its
//! payload went out (direct aligned writes, page-cache writes with early writeback, the
//! unaligned tail), and DST appears only once the conversion succeeded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::convert::{to_path, ConvertOptions, Target};
use vhdkit::{create, Chain, ChainOptions, ChainView, CreateParams, Progress, WritableDisk};

const MIB: u64 = 1 << 20;

/// A dynamic VHDX of 40 MiB plus 1536 bytes (the raw output's tail is not 4 KiB-aligned) with
/// 20 MiB of varied data in runs of several sizes and alignments, and its expected contents.
fn source(dir: &Path) -> (ChainView, Vec<u8>) {
    let size = 40 * MIB + 1536;
    let p = dir.join("src.vhdx");
    create(&p, &CreateParams::dynamic(size)).unwrap();
    let mut want = vec![0u8; usize::try_from(size).unwrap()];
    let mut d = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    let runs: [(u64, u64); 5] = [
        (0, 12 * MIB),
        (13 * MIB + 512, 3 * MIB),
        (20 * MIB + 4096, 64 << 10),
        (24 * MIB, 5 * MIB - 512),
        (size - 3 * MIB, 3 * MIB),
    ];
    for (i, (at, len)) in runs.into_iter().enumerate() {
        let data: Vec<u8> = (0..len)
            .map(|k| u8::try_from((k / 512 + i as u64 * 7) % 251).unwrap() + 1)
            .collect();
        d.write_at(at, &data).unwrap();
        let a = usize::try_from(at).unwrap();
        want[a..a + data.len()].copy_from_slice(&data);
    }
    d.close().unwrap();
    let view = Chain::open(&p, &ChainOptions::default())
        .unwrap()
        .into_view();
    (view, want)
}

/// Fails the test if `dst` exists while the conversion runs; counts the steps it saw.
struct NoDstYet {
    dst: PathBuf,
    steps: u32,
}

impl Progress for NoDstYet {
    fn advance(&mut self, _n: u64) {
        assert!(
            std::fs::symlink_metadata(&self.dst).is_err(),
            "{} exists before the conversion finished",
            self.dst.display()
        );
        self.steps += 1;
    }
}

fn read_back(view_path: &Path) -> Vec<u8> {
    let v = Chain::open(view_path, &ChainOptions::default())
        .unwrap()
        .into_view();
    let mut got = vec![0u8; usize::try_from(v.virtual_size()).unwrap()];
    v.read_exact_at(&mut got, 0).unwrap();
    got
}

#[test]
fn raw_outputs_are_exact_and_named_only_at_the_end() {
    let d = tempfile::tempdir().unwrap();
    let (view, want) = source(d.path());
    for no_sync in [false, true] {
        let dst = d.path().join(format!("out-{no_sync}.raw"));
        let mut p = NoDstYet {
            dst: dst.clone(),
            steps: 0,
        };
        let opts = ConvertOptions::default().no_sync(no_sync);
        let stats = to_path(&view, &dst, Target::Raw, &opts, &mut p).unwrap();
        assert!(p.steps > 3, "only {} progress steps", p.steps);
        // Whole 64 KiB grains around the 20 MiB of data, holes elsewhere.
        assert!(
            (20 * MIB..24 * MIB).contains(&stats.bytes_written),
            "{stats:?}"
        );
        let got = std::fs::read(&dst).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "no_sync={no_sync}: raw output differs");
        // Only DST is left: no temporary name beside it.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| {
                let n = n.to_string_lossy();
                n == "src.vhdx" || n.starts_with("out-")
            }),
            "{names:?}"
        );
    }
}

#[test]
fn image_outputs_are_exact_and_named_only_at_the_end() {
    let d = tempfile::tempdir().unwrap();
    let (view, want) = source(d.path());
    // The image holds the source padded to whole sectors.
    let mut want = want;
    want.resize(want.len().div_ceil(512) * 512, 0);
    for (target, ext) in [(Target::Vhdx, "vhdx"), (Target::Vhd, "vhd")] {
        for no_sync in [false, true] {
            let dst = d.path().join(format!("out-{no_sync}.{ext}"));
            let mut p = NoDstYet {
                dst: dst.clone(),
                steps: 0,
            };
            let opts = ConvertOptions::default()
                .no_sync(no_sync)
                .block_size(Some(2 << 20));
            to_path(&view, &dst, target, &opts, &mut p).unwrap();
            assert!(p.steps > 3);
            let got = read_back(&dst);
            assert!(got == want, "{ext} no_sync={no_sync}: contents differ");
        }
    }
}
