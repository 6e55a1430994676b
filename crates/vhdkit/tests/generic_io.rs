//! Creating and converting into any `OutputSink` (here an in-memory `Cursor<Vec<u8>>`) gives the
//! bytes the path functions write, and a `Progress` sees every conversion and can cancel it
//! without leaving a partial output behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use uuid::Uuid;
use vhdkit::convert::{to_path, to_sink, ConvertOptions, Target};
use vhdkit::create_into;
use vhdkit::{
    create, Chain, ChainOptions, ChainView, CreateParams, Disk, DiskFormat, OpenOptions, Progress,
    WritableDisk,
};

const MIB: u64 = 1 << 20;

/// A dynamic VHDX of 12 MiB with data in three places (one of them across a block boundary
/// of a 2 MiB-block output), as a view.
fn source(dir: &Path) -> ChainView {
    let p = dir.join("src.vhdx");
    create(&p, &CreateParams::dynamic(12 * MIB)).unwrap();
    let mut d = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    for (at, byte) in [
        (4096, 0x11u8),
        (2 * MIB - 1000, 0x22),
        (9 * MIB + 512, 0x33),
    ] {
        d.seek(SeekFrom::Start(at)).unwrap();
        d.write_all(&vec![byte; 70_000]).unwrap();
    }
    d.close().unwrap();
    Chain::open(&p, &ChainOptions::default())
        .unwrap()
        .into_view()
}

/// The byte ranges where `a` and `b` differ (same length asserted).
fn differences(a: &[u8], b: &[u8]) -> Vec<Range<usize>> {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            match out.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => out.push(i..i + 1),
            }
        }
    }
    out
}

/// Every difference lies inside one of `allowed`.
fn only_within(diffs: &[Range<usize>], allowed: &[Range<usize>]) -> bool {
    diffs
        .iter()
        .all(|d| allowed.iter().any(|a| a.start <= d.start && d.end <= a.end))
}

/// The whole virtual disk of an image held in memory.
fn contents(image: Vec<u8>) -> Vec<u8> {
    let view = Disk::from_source(Box::new(image), &OpenOptions::default())
        .unwrap()
        .view();
    let mut buf = vec![0u8; usize::try_from(view.virtual_size()).unwrap()];
    view.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// The same VHD (same id) made at a path and in memory. The VHD time stamp has a one-second
/// grain, so a pair made across a second boundary is made again.
fn vhd_pair(dir: &Path, name: &str, p: &CreateParams) -> (Vec<u8>, Vec<u8>) {
    for _ in 0..3 {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let on_disk = create(&path, p).unwrap();
        let mut mem = Cursor::new(Vec::new());
        let in_mem = create_into(&mut mem, &path, p).unwrap();
        assert_eq!(
            (in_mem.path, in_mem.file_size, in_mem.id),
            (on_disk.path, on_disk.file_size, on_disk.id)
        );
        let file = std::fs::read(&path).unwrap();
        if file == mem.get_ref()[..] {
            return (file, mem.into_inner());
        }
    }
    panic!("the VHD made in memory differs from the one made at a path");
}

#[test]
fn create_into_a_cursor_writes_the_bytes_of_create() {
    let t = tempfile::tempdir().unwrap();
    let id = Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
    // VHD: every byte equal (the id is given; the time stamp is the same second).
    let dynamic = CreateParams::dynamic(64 * MIB).id(id);
    let (file, mem) = vhd_pair(t.path(), "base.vhd", &dynamic);
    assert_eq!(file.len(), mem.len());
    vhd_pair(t.path(), "fixed.vhd", &CreateParams::fixed(3 * MIB).id(id));
    // A differencing VHD: its locators are made for the name given, as at the path.
    let child = CreateParams::differencing(t.path().join("base.vhd")).id(id);
    let (file, _) = vhd_pair(t.path(), "child.vhd", &child);
    let rel: Vec<u8> = ".\\base.vhd"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert!(file.windows(rel.len()).any(|w| w == rel));

    // VHDX: its FileWriteGuid and VirtualDiskId are random, so the bytes differ only in the
    // two headers (64 KiB and 128 KiB) and in the metadata region (2 MiB): never in the BAT
    // or anywhere else.
    let path = t.path().join("base.vhdx");
    let p = CreateParams::dynamic(64 * MIB).id(id);
    create(&path, &p).unwrap();
    let mut mem = Cursor::new(Vec::new());
    let made = create_into(&mut mem, &path, &p).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert_eq!(mem.get_ref().len() as u64, made.file_size);
    let diffs = differences(&file, mem.get_ref());
    assert!(!diffs.is_empty());
    let (headers, metadata) = (0x10000..0x30000, 2 << 20..3 << 20);
    assert!(only_within(&diffs, &[headers, metadata]), "{diffs:?}");
    let disk = Disk::from_source(Box::new(mem.into_inner()), &OpenOptions::default()).unwrap();
    assert_eq!(disk.identity(), id);
    assert_eq!(disk.virtual_size(), 64 * MIB);
}

#[test]
fn create_into_refuses_what_create_refuses_but_not_an_existing_name() {
    let t = tempfile::tempdir().unwrap();
    let mut mem = Cursor::new(Vec::new());
    // The format comes from the name; a name without a known extension needs one.
    let e = create_into(&mut mem, "disk.img", &CreateParams::dynamic(MIB)).unwrap_err();
    assert!(e.to_string().contains("format"), "{e}");
    assert!(mem.get_ref().is_empty());
    // The name is never opened: an existing file there is not in the way.
    let taken = t.path().join("taken.vhd");
    std::fs::write(&taken, b"x").unwrap();
    let made = create_into(&mut mem, &taken, &CreateParams::dynamic(MIB)).unwrap();
    assert_eq!(made.format, DiskFormat::Vhd);
    assert_eq!(std::fs::read(&taken).unwrap(), b"x");
}

#[test]
fn raw_into_a_cursor_is_the_raw_file() {
    let t = tempfile::tempdir().unwrap();
    let view = source(t.path());
    let path = t.path().join("out.img");
    let on_disk = to_path(&view, &path, Target::Raw, &ConvertOptions::default(), ()).unwrap();
    let mut mem = Cursor::new(Vec::new());
    let in_mem = to_sink(&view, &mut mem, Target::Raw, &ConvertOptions::default(), ()).unwrap();
    assert_eq!(in_mem, on_disk);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file, mem.into_inner());
    assert_eq!(file.len() as u64, 12 * MIB);
    assert_eq!(file[4096], 0x11);
    assert_eq!(file[9 << 20 | 512], 0x33);
}

#[test]
fn vhd_and_vhdx_into_a_cursor_match_the_files() {
    let t = tempfile::tempdir().unwrap();
    let view = source(t.path());
    let mut want = vec![0u8; 12 << 20];
    view.read_exact_at(&mut want, 0).unwrap();
    for fixed in [false, true] {
        let opts = ConvertOptions::default()
            .fixed(fixed)
            .block_size(Some(2 << 20));
        // VHD: only the unique id, time stamp and checksum of the two footers differ.
        let path = t.path().join(format!("out-{fixed}.vhd"));
        let on_disk = to_path(&view, &path, Target::Vhd, &opts, ()).unwrap();
        let mut mem = Cursor::new(Vec::new());
        assert_eq!(
            to_sink(&view, &mut mem, Target::Vhd, &opts, ()).unwrap(),
            on_disk
        );
        let file = std::fs::read(&path).unwrap();
        let len = file.len();
        let diffs = differences(&file, mem.get_ref());
        assert!(only_within(&diffs, &[0..512, len - 512..len]), "{diffs:?}");
        assert_eq!(contents(mem.into_inner()), want);

        // VHDX: ids (headers, metadata) and the log entries that carry them differ; the BAT
        // at 3 MiB and the data after it do not.
        let path = t.path().join(format!("out-{fixed}.vhdx"));
        let on_disk = to_path(&view, &path, Target::Vhdx, &opts, ()).unwrap();
        let mut mem = Cursor::new(Vec::new());
        assert_eq!(
            to_sink(&view, &mut mem, Target::Vhdx, &opts, ()).unwrap(),
            on_disk
        );
        let file = std::fs::read(&path).unwrap();
        let diffs = differences(&file, mem.get_ref());
        assert!(diffs.iter().all(|d| d.end <= 3 << 20), "{diffs:?}");
        assert_eq!(contents(mem.into_inner()), want);
    }
}

/// Records the phases and units reported, and cancels once `cancel_after` advances were made.
#[derive(Default)]
struct Recorder {
    phases: Vec<(String, Option<u64>)>,
    advances: u64,
    units: u64,
    finished: usize,
    cancel_after: Option<u64>,
}

impl Progress for Recorder {
    fn start(&mut self, what: &str, total: Option<u64>) {
        self.phases.push((what.to_string(), total));
    }
    fn advance(&mut self, n: u64) {
        self.advances += 1;
        self.units += n;
    }
    fn finish(&mut self) {
        self.finished += 1;
    }
    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.advances >= n)
    }
}

#[test]
fn conversions_report_one_phase_covering_the_disk() {
    let t = tempfile::tempdir().unwrap();
    let view = source(t.path());
    for to in ["img", "vhd", "vhdx"] {
        let mut r = Recorder::default();
        let dst = t.path().join(format!("p.{to}"));
        let opts = ConvertOptions::default();
        match to {
            "img" => to_path(&view, &dst, Target::Raw, &opts, &mut r).map(|_| ()),
            "vhd" => to_path(&view, &dst, Target::Vhd, &opts, &mut r).map(|_| ()),
            _ => to_path(&view, &dst, Target::Vhdx, &opts, &mut r).map(|_| ()),
        }
        .unwrap();
        assert_eq!(r.phases, [("convert".to_string(), Some(12 * MIB))], "{to}");
        assert_eq!((r.units, r.finished), (12 * MIB, 1), "{to}");
        assert!(r.advances > 1, "{to}: {}", r.advances);
    }
}

#[test]
fn a_cancelled_conversion_leaves_no_output() {
    let t = tempfile::tempdir().unwrap();
    let view = source(t.path());
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for to in ["img", "vhd", "vhdx"] {
        let mut r = Recorder {
            cancel_after: Some(2),
            ..Recorder::default()
        };
        let dst = out.join(format!("c.{to}"));
        let opts = ConvertOptions::default().block_size(Some(2 << 20));
        let e = match to {
            "img" => to_path(&view, &dst, Target::Raw, &opts, &mut r).map(|_| ()),
            "vhd" => to_path(&view, &dst, Target::Vhd, &opts, &mut r).map(|_| ()),
            _ => to_path(&view, &dst, Target::Vhdx, &opts, &mut r).map(|_| ()),
        }
        .unwrap_err();
        assert!(e.is_cancelled(), "{to}: {e}");
        assert!(
            matches!(e.kind(), vhdkit::ErrorKind::Refused { .. }),
            "{to}"
        );
        // Stopped right after the second step, and said so to the progress.
        assert_eq!((r.advances, r.finished), (2, 1), "{to}");
        assert!(r.units < 12 * MIB, "{to}");
        // Neither the destination nor the partial file it was built under is left.
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "{to}: {left:?}");
    }
    // Into a sink, the error is the same (the sink then holds a partial image).
    let mut r = Recorder {
        cancel_after: Some(1),
        ..Recorder::default()
    };
    let mut mem = Cursor::new(Vec::new());
    let e = to_sink(
        &view,
        &mut mem,
        Target::Vhdx,
        &ConvertOptions::default(),
        &mut r,
    )
    .unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(r.advances, 1);
}
