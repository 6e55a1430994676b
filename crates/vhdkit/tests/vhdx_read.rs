//! VHDX reading: real images (shared test data) and images built with the testkit writer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use uuid::Uuid;
use vhdkit::{ChainView, Disk, DiskType, Extent, OpenOptions};
use vhdkit_testkit::{real_data_dir, sha256_file, sha256_reader, unpack_real};

fn real(rel: &str, dir: &Path) -> Option<std::path::PathBuf> {
    let real = real_data_dir(rel)?;
    Some(unpack_real(&real, rel, dir))
}

fn check_hash(rel: &str, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(p) = real(rel, tmp.path()) else {
        return;
    };
    let before = sha256_file(&p);
    let disk = Disk::open(&p).unwrap();
    assert_eq!(disk.format(), vhdkit::DiskFormat::Vhdx);
    let got = sha256_reader(disk.view());
    assert_eq!(got, expected, "{rel}");
    assert_eq!(sha256_file(&p), before, "{rel} was modified");
}

#[test]
fn real_fixed() {
    check_hash(
        "dissect.hypervisor/fixed.vhdx.gz",
        "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62",
    );
}

#[test]
fn real_dynamic() {
    check_hash(
        "dissect.hypervisor/dynamic.vhdx.gz",
        "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac",
    );
}

#[test]
fn real_iotest_dynamic() {
    check_hash(
        "qemu-iotests/iotest-dynamic-1G.vhdx.bz2",
        "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478",
    );
}

#[test]
fn real_disk2vhd_identical_headers() {
    check_hash(
        "qemu-iotests/test-disk2vhd.vhdx.bz2",
        "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a",
    );
}

#[test]
fn real_dirty_log_replayed_in_memory() {
    check_hash(
        "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f",
    );
    let tmp = tempfile::tempdir().unwrap();
    let Some(p) = real("qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2", tmp.path()) else {
        return;
    };
    let disk = Disk::open(&p).unwrap();
    let w = disk.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("log replayed in memory (1 entries, seq 7..7)")),
        "{w:?}"
    );
    let vhdkit::FormatInfo::Vhdx(info) = disk.info().details else {
        panic!("not vhdx")
    };
    assert_eq!(info.log.state, vhdkit::vhdx::LogState::ReplayedInMemory);
    assert_eq!(info.log.last_sequence, Some(7));
    assert_eq!(info.bat.fully_present, 18);
    // Block 17 (added by the log) holds 0xa5.
    assert!(matches!(
        disk.map(17 << 20, 1 << 20).unwrap(),
        (Extent::Data { .. }, 0x100000)
    ));
}

mod built {
    use super::*;
    use vhdkit::Error;
    use vhdkit_testkit::through::DamageTally;
    use vhdkit_testkit::vhdx::{Built, Kind, LogOptions, VhdxBuilder};
    use vhdkit_testkit::Rng;

    fn open(bytes: Vec<u8>) -> Result<Disk, vhdkit::Error> {
        Disk::from_source(Box::new(bytes), &OpenOptions::default())
    }

    fn read_all(view: &ChainView) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(view.virtual_size()).unwrap()];
        view.read_exact_at(&mut v, 0).unwrap();
        v
    }

    fn model_write(m: &mut [u8], off: u64, data: &[u8]) {
        let o = usize::try_from(off).unwrap();
        m[o..o + data.len()].copy_from_slice(data);
    }

    /// Chains of depth 1..=5, random sector-aligned writes (some whole blocks), both sector
    /// sizes; compared with an in-memory model.
    #[test]
    fn chains_match_model() {
        for &ls in &[512u32, 4096] {
            for depth in 1..=5usize {
                let size = 6 << 20;
                let mut rng = Rng::new(u64::from(ls) * 31 + depth as u64);
                let mut model = vec![0u8; size as usize];
                let mut disks = Vec::new();
                let mut parent_id = Uuid::nil();
                for level in 0..depth {
                    let kind = if level == 0 {
                        Kind::Dynamic
                    } else {
                        Kind::Differencing
                    };
                    let mut b = VhdxBuilder::new(kind, size, 1 << 20, ls);
                    b.data_write_guid = Uuid::from_u128(0x1000 + level as u128);
                    b.parent_linkage = parent_id;
                    parent_id = b.data_write_guid;
                    for _ in 0..6 {
                        let sectors = 1 + rng.below(40);
                        let len = sectors * u64::from(ls);
                        let off = rng.below((size - len) / u64::from(ls)) * u64::from(ls);
                        let mut d = vec![0u8; len as usize];
                        rng.fill(&mut d);
                        b.write(off, &d);
                        model_write(&mut model, off, &d);
                    }
                    if level % 2 == 1 {
                        // A whole block: FULLY_PRESENT in a differencing disk.
                        let mut d = vec![0u8; 1 << 20];
                        rng.fill(&mut d);
                        b.write(3 << 20, &d);
                        model_write(&mut model, 3 << 20, &d);
                    }
                    disks.push(open(b.build().bytes).unwrap());
                }
                disks.reverse();
                if depth > 1 {
                    assert_eq!(disks[0].disk_type(), DiskType::Differencing);
                    assert_eq!(disks[0].parent_linkage().unwrap().id, disks[1].identity());
                }
                let view = ChainView::new(disks);
                assert!(read_all(&view) == model, "ls {ls} depth {depth}");
            }
        }
    }

    /// Set BAT entry `index` of a built image.
    fn set_bat(b: &mut Built, index: u64, v: u64) {
        let at = usize::try_from(b.layout.bat_offset + index * 8).unwrap();
        b.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A PARTIALLY_PRESENT block whose sector bitmap block is not present is refused at open,
    /// naming the BAT entry: its bitmap would otherwise be read from file offset 0.
    #[test]
    fn partially_present_without_bitmap_block_is_refused() {
        let mut child = VhdxBuilder::new(Kind::Differencing, 2 << 20, 1 << 20, 512);
        child.write(3 * 512, &[0x22; 512]);
        let mut b = child.build();
        let cr = b.layout.chunk_ratio;
        assert!(open(b.bytes.clone()).is_ok());
        set_bat(&mut b, cr, 0); // the chunk's sector bitmap entry: NOT_PRESENT
        let e = open(b.bytes).unwrap_err();
        assert!(e.is_corruption(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("PARTIALLY_PRESENT but its sector bitmap entry"),
            "{msg}"
        );
        assert_eq!(
            e.location().map(|l| l.offset),
            Some(b.layout.bat_offset),
            "{msg}"
        );
    }

    /// PARTIALLY_PRESENT needs a parent: in a dynamic disk it is refused.
    #[test]
    fn partially_present_in_a_dynamic_disk_is_refused() {
        let mut d = VhdxBuilder::new(Kind::Dynamic, 2 << 20, 1 << 20, 512);
        d.write(0, &[0x22; 512]);
        let mut b = d.build();
        let at = usize::try_from(b.layout.bat_offset).unwrap();
        let e0 = u64::from_le_bytes(b.bytes[at..at + 8].try_into().unwrap());
        set_bat(&mut b, 0, (e0 & !7) | 7); // state 7: PARTIALLY_PRESENT
        let e = open(b.bytes).unwrap_err();
        assert!(e.to_string().contains("without a parent"), "{e}");
    }

    /// Writes that start and end in the middle of a bitmap byte (sector 3..13 of a block).
    #[test]
    fn mid_bitmap_byte_runs() {
        let mut parent = VhdxBuilder::new(Kind::Fixed, 2 << 20, 1 << 20, 512);
        parent.write(0, &vec![0x11; 2 << 20]);
        let mut child = VhdxBuilder::new(Kind::Differencing, 2 << 20, 1 << 20, 512);
        child.parent_linkage = parent.data_write_guid;
        child.write(3 * 512, &vec![0x22; 10 * 512]);
        child.write((1 << 20) + 7 * 512, &vec![0x33; 512]);
        let c = open(child.build().bytes).unwrap();
        assert_eq!(c.map(0, 1 << 20).unwrap(), (Extent::Unallocated, 3 * 512));
        assert!(matches!(
            c.map(3 * 512, 1 << 20).unwrap(),
            (Extent::Data { .. }, 5120)
        ));
        assert_eq!(c.map(13 * 512, 1 << 20).unwrap().1, (1 << 20) - 13 * 512);
        let p = open(parent.build().bytes).unwrap();
        let all = read_all(&ChainView::new(vec![c, p]));
        assert!(all[..1536].iter().all(|&b| b == 0x11));
        assert!(all[1536..6656].iter().all(|&b| b == 0x22));
        assert!(all[6656..(1 << 20) + 3584].iter().all(|&b| b == 0x11));
        assert!(all[(1 << 20) + 3584..(1 << 20) + 4096]
            .iter()
            .all(|&b| b == 0x33));
    }

    #[test]
    fn zero_blocks_hide_the_parent() {
        let mut parent = VhdxBuilder::new(Kind::Dynamic, 2 << 20, 1 << 20, 512);
        parent.write(0, &vec![0x11; 2 << 20]);
        let mut child = VhdxBuilder::new(Kind::Differencing, 2 << 20, 1 << 20, 512);
        child.parent_linkage = parent.data_write_guid;
        child.zero_block(1);
        let c = open(child.build().bytes).unwrap();
        assert_eq!(c.map(1 << 20, 4096).unwrap(), (Extent::Zero, 4096));
        let p = open(parent.build().bytes).unwrap();
        let all = read_all(&ChainView::new(vec![c, p]));
        assert!(all[..1 << 20].iter().all(|&b| b == 0x11));
        assert!(all[1 << 20..].iter().all(|&b| b == 0));
    }

    /// Blocks that hold nothing, or read as zeros, form one run each, across the sector bitmap
    /// entries between chunks (1 MiB blocks: 4096 per chunk), ending at a block of another
    /// kind, at the end of the disk, or at the range asked about.
    #[test]
    fn runs_of_empty_blocks_span_chunks() {
        const MIB: u64 = 1 << 20;
        let size = 4200 * MIB;
        let mut d = VhdxBuilder::new(Kind::Dynamic, size, 1 << 20, 512);
        d.write(10 * MIB, &[0x44; 512]);
        d.write(4100 * MIB + 512, &[0x55; 512]);
        d.zero_block(4098);
        d.zero_block(4099);
        let mut b = d.build();
        assert_eq!(b.layout.chunk_ratio, 4096);
        set_bat(&mut b, 4097 + 1, 3); // block 4097 (after chunk 0's bitmap entry): UNMAPPED
        let disk = open(b.bytes).unwrap();
        let map = |at: u64, len: u64| disk.map(at, len).unwrap();
        assert_eq!(map(0, size), (Extent::Unallocated, 10 * MIB));
        assert!(matches!(map(10 * MIB, size), (Extent::Data { .. }, MIB)));
        assert_eq!(
            map(11 * MIB + 5, size),
            (Extent::Unallocated, (4097 - 11) * MIB - 5)
        );
        assert_eq!(map(11 * MIB + 5, 2 * MIB), (Extent::Unallocated, 2 * MIB));
        assert_eq!(map(4097 * MIB, size), (Extent::Zero, 3 * MIB));
        assert_eq!(map(4097 * MIB + 7, MIB), (Extent::Zero, MIB));
        assert!(matches!(map(4100 * MIB, size), (Extent::Data { .. }, MIB)));
        assert_eq!(map(4101 * MIB, size), (Extent::Unallocated, 99 * MIB));
        let view = ChainView::new(vec![disk]);
        assert_eq!(
            view.allocation(11 * MIB, size - 11 * MIB).unwrap(),
            (vhdkit::Allocation::Zero, (4097 - 11) * MIB)
        );
        let mut buf = vec![0xA5u8; 3 << 20];
        view.read_exact_at(&mut buf, 4096 * MIB).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        view.read_exact_at(&mut buf, 4099 * MIB).unwrap();
        assert_eq!(buf[MIB as usize + 511], 0);
        assert!(buf[MIB as usize + 512..MIB as usize + 1024]
            .iter()
            .all(|&x| x == 0x55));
    }

    fn dynamic_with_data() -> (VhdxBuilder, Built) {
        let mut b = VhdxBuilder::new(Kind::Dynamic, 4 << 20, 1 << 20, 512);
        b.write(0, &vec![0xA5; 8192]);
        b.write(2 << 20, &vec![0x5A; 1 << 20]);
        let built = b.build();
        (b, built)
    }

    fn dirty(o: &LogOptions) -> (Vec<u8>, Vec<u8>) {
        let (_, clean) = dynamic_with_data();
        let mut d = clean.clone();
        let blk0 = clean.layout.block_offsets[&0];
        // BAT sector, a payload sector and a zero range that was zeros.
        d.make_dirty(&[clean.layout.bat_offset, blk0], &[(blk0 + 65536, 8192)], o);
        (clean.bytes, d.bytes)
    }

    #[test]
    fn dirty_log_reads_replayed_contents() {
        for wrap in [false, true] {
            let (clean, dirty_bytes) = dirty(&LogOptions {
                wrap,
                ..LogOptions::default()
            });
            let expect = read_all(&open(clean).unwrap().view());
            let d = open(dirty_bytes.clone()).unwrap();
            assert!(d
                .warnings()
                .iter()
                .any(|w| w.contains("log replayed in memory (1 entries, seq 10..10)")));
            assert!(read_all(&d.view()) == expect, "wrap {wrap}");
        }
    }

    fn log_err(o: LogOptions) -> Error {
        let (_, d) = dirty(&o);
        open(d).unwrap_err()
    }

    #[test]
    fn broken_logs_are_typed_errors() {
        for o in [
            LogOptions {
                bad_crc: true,
                ..LogOptions::default()
            },
            LogOptions {
                wrong_guid: true,
                ..LogOptions::default()
            },
            LogOptions {
                torn: true,
                ..LogOptions::default()
            },
            LogOptions {
                entry_length_override: Some(4096),
                ..LogOptions::default()
            },
            LogOptions {
                entry_length_override: Some(2 << 20),
                ..LogOptions::default()
            },
        ] {
            let e = log_err(o.clone());
            assert!(e.is_corruption(), "{o:?}: {e}");
            assert!(
                e.to_string().contains("log is corrupt or torn"),
                "{o:?}: {e}"
            );
            assert!(
                e.to_string().contains("vhdx log entry at offset 0x100000"),
                "{e}"
            );
        }
        let e = log_err(LogOptions {
            flushed_file_offset: Some(1 << 40),
            ..LogOptions::default()
        });
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    fn corrupt_case(edit: impl FnOnce(&mut Built)) -> Result<Disk, vhdkit::Error> {
        let (_, mut b) = dynamic_with_data();
        edit(&mut b);
        open(b.bytes)
    }

    fn expect_err(edit: impl FnOnce(&mut Built), want: &str) {
        let e = corrupt_case(edit).unwrap_err();
        assert!(e.to_string().contains(want), "want {want:?}, got {e}");
    }

    #[test]
    fn damaged_copies_warn_and_structures_error() {
        let d = corrupt_case(|b| b.bytes[0x10000 + 100] ^= 1).unwrap();
        assert!(d
            .warnings()
            .iter()
            .any(|w| w.contains("header 1 is damaged")));
        let d = corrupt_case(|b| b.bytes[0x20000 + 100] ^= 1).unwrap();
        assert!(d
            .warnings()
            .iter()
            .any(|w| w.contains("header 2 is damaged")));
        let d = corrupt_case(|b| b.bytes[0x30000 + 100] ^= 1).unwrap();
        assert!(d
            .warnings()
            .iter()
            .any(|w| w.contains("region table 1 is damaged")));
        let d = corrupt_case(|b| b.bytes[0x40000 + 100] ^= 1).unwrap();
        assert!(d
            .warnings()
            .iter()
            .any(|w| w.contains("region table 2 is damaged")));
        expect_err(
            |b| {
                b.bytes[0x10000] = b'x';
                b.bytes[0x20004] ^= 1;
            },
            "no valid header",
        );
        expect_err(|b| b.bytes[0] = b'X', "no 'vhdxfile' signature");
        expect_err(
            |b| {
                b.bytes[0x30004] ^= 1;
                b.bytes[0x40000] = 0;
            },
            "vhdx region table 1 at offset 0x30000: checksum",
        );
        // Tied sequence numbers with different contents.
        expect_err(
            |b| {
                b.bytes[0x10008] = 2;
                b.bytes[0x10000 + 200] = 1;
                b.fix_header_crc(0);
            },
            "both headers have sequence number 2",
        );
    }

    fn both_tables(b: &mut Built, f: impl Fn(&mut [u8])) {
        for (slot, off) in [(0, 0x30000usize), (1, 0x40000)] {
            f(&mut b.bytes[off..off + 65536]);
            b.fix_region_crc(slot);
        }
    }

    #[test]
    fn region_rules() {
        // Entry 1 (metadata) moved onto the BAT at 3 MiB.
        expect_err(
            |b| {
                both_tables(b, |t| {
                    t[64..72].copy_from_slice(&(3u64 << 20).to_le_bytes())
                })
            },
            "overlaps region bat",
        );
        // Metadata onto the log.
        expect_err(
            |b| {
                both_tables(b, |t| {
                    t[64..72].copy_from_slice(&(1u64 << 20).to_le_bytes())
                })
            },
            "overlaps the log",
        );
        expect_err(
            |b| {
                both_tables(b, |t| {
                    t[64..72].copy_from_slice(&(1u64 << 40).to_le_bytes())
                })
            },
            "past the end of the file",
        );
        expect_err(
            |b| both_tables(b, |t| t[9] = 0xFF),
            "entry count 65282, allowed 0..=2047",
        );
        // Unknown required region.
        let e = corrupt_case(|b| both_tables(b, |t| t[16] ^= 0x55)).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }

    fn meta_entry(b: &mut Built, i: usize) -> usize {
        usize::try_from(b.layout.metadata_offset).unwrap() + 32 + 32 * i
    }

    #[test]
    fn metadata_rules() {
        expect_err(
            |b| {
                let e = meta_entry(b, 0);
                b.bytes[e + 16..e + 20].copy_from_slice(&(0xFFFF0u32).to_le_bytes());
                b.bytes[e + 20..e + 24].copy_from_slice(&(0x100u32).to_le_bytes());
            },
            "ends past the metadata region",
        );
        expect_err(
            |b| {
                let e = meta_entry(b, 1);
                b.bytes[e + 16..e + 20].copy_from_slice(&(0x10004u32).to_le_bytes());
            },
            "overlaps item",
        );
        expect_err(
            |b| {
                let i = usize::try_from(b.layout.metadata_offset).unwrap() + 0x10010;
                b.bytes[i..i + 4].copy_from_slice(&1000u32.to_le_bytes());
            },
            "logical sector size 1000: must be 512 or 4096",
        );
        expect_err(
            |b| {
                let i = usize::try_from(b.layout.metadata_offset).unwrap() + 0x10014;
                b.bytes[i..i + 4].copy_from_slice(&0u32.to_le_bytes());
            },
            "physical sector size 0",
        );
        expect_err(
            |b| {
                let i = usize::try_from(b.layout.metadata_offset).unwrap() + 0x10000;
                b.bytes[i..i + 4].copy_from_slice(&(3u32 << 20).to_le_bytes());
            },
            "vhdx metadata item file parameters at offset 0x210000: block size 3145728",
        );
        expect_err(
            |b| b.bytes[0x200000] = b'X',
            "vhdx metadata table at offset 0x200000",
        );
    }

    #[test]
    fn bat_rules() {
        let bat = |b: &Built| usize::try_from(b.layout.bat_offset).unwrap();
        expect_err(
            |b| {
                let i = bat(b);
                b.bytes[i..i + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
            },
            "ends past the end of the file",
        );
        expect_err(
            |b| {
                let i = bat(b);
                let e1 = u64::from_le_bytes(b.bytes[i + 16..i + 24].try_into().unwrap());
                b.bytes[i..i + 8].copy_from_slice(&e1.to_le_bytes());
            },
            "overlapping blocks",
        );
        expect_err(
            |b| {
                let i = bat(b);
                b.bytes[i..i + 8].copy_from_slice(&((3u64 << 20) | 6).to_le_bytes());
            },
            "overlaps region bat",
        );
        expect_err(
            |b| {
                let i = bat(b);
                b.bytes[i] = 4;
            },
            "reserved state 4",
        );
        expect_err(
            |b| {
                let i = bat(b);
                b.bytes[i] |= 7;
            },
            "PARTIALLY_PRESENT in a disk without a parent",
        );
        expect_err(
            |b| {
                let i = bat(b);
                b.bytes[i] |= 0x80;
            },
            "reserved bits",
        );
        let d = corrupt_case(|b| {
            let i = bat(b);
            b.bytes[i + 8] = 5;
        })
        .unwrap();
        assert!(d.warnings().iter().any(|w| w.contains("state 5")));
    }

    /// Truncations and single-byte damage anywhere in the structures never panic.
    #[test]
    fn no_panics_on_damage() {
        let (_, clean) = dirty(&LogOptions::default());
        for cut in [
            0usize, 7, 600, 0x10000, 0x20800, 0x30010, 0x100000, 0x200020, 0x300000, 0x380000,
        ] {
            let e = open(clean[..cut.min(clean.len())].to_vec());
            assert!(e.is_err(), "cut {cut}");
        }
        let mut rng = Rng::new(7);
        let mut tally = DamageTally::default();
        for _ in 0..300 {
            let mut b = clean.clone();
            let region = [
                0u64, 0x10000, 0x20000, 0x30000, 0x100000, 0x200000, 0x210000, 0x300000,
            ];
            let base = region[usize::try_from(rng.below(8)).unwrap()];
            let at = usize::try_from(base + rng.below(200)).unwrap();
            b[at] = u8::try_from(rng.below(256)).unwrap();
            tally.record(open(b), &format!("damage at {at:#x}"));
        }
        tally.assert_both_seen();
    }
}

/// The real Hyper-V checkpoint over a synthetic parent with the linked DataWriteGuid; expected
/// contents built from the child's own BAT and sector bitmap bits.
#[test]
fn real_differencing_with_synthetic_parent() {
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
    let tmp = tempfile::tempdir().unwrap();
    let Some(p) = real("dissect.hypervisor/differencing.avhdx.gz", tmp.path()) else {
        return;
    };
    let child = Disk::open(&p).unwrap();
    let info = child.info();
    let vhdkit::FormatInfo::Vhdx(x) = &info.details else {
        panic!("not vhdx")
    };
    assert_eq!(child.disk_type(), DiskType::Differencing);
    assert_eq!(
        (child.logical_sector_size(), child.physical_sector_size()),
        (512, 4096)
    );
    assert_eq!(x.chunk_ratio, 2048);
    assert_eq!(x.bat.partially_present, 32);
    assert_eq!(x.bat.sector_bitmap_present, 2);
    let linkage = child.parent_linkage().unwrap();
    assert_eq!(
        linkage.id.to_string(),
        "ff34003b-11ed-4cf8-a166-b2be05e20b80"
    );
    assert_eq!(linkage.alternate_id, None);
    let keys: Vec<_> = x
        .parent_locator
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "parent_linkage",
            "absolute_win32_path",
            "relative_path",
            "volume_path",
            "parent_linkage2"
        ]
    );
    let kinds: Vec<_> = child
        .parent_locators()
        .into_iter()
        .map(|l| l.kind)
        .collect();
    assert_eq!(
        kinds,
        ["relative_path", "volume_path", "absolute_win32_path"]
    );

    let mut parent = VhdxBuilder::new(Kind::Dynamic, 8 << 30, 2 << 20, 512);
    parent.data_write_guid = Uuid::parse_str("ff34003b-11ed-4cf8-a166-b2be05e20b80").unwrap();
    let blocks = [0u64, 5, 256, 923, 1018];
    for &b in &blocks {
        parent.write(b << 21, &vec![u8::try_from(b % 251).unwrap() + 1; 2 << 20]);
    }
    let parent_disk =
        Disk::from_source(Box::new(parent.build().bytes), &OpenOptions::default()).unwrap();
    assert_eq!(parent_disk.identity(), linkage.id);

    let raw = std::fs::read(&p).unwrap();
    let bat_off = x.region_tables[0]
        .entries
        .iter()
        .find(|r| r.name.as_deref() == Some("bat"))
        .unwrap()
        .offset;
    let entry = |i: u64| {
        let a = usize::try_from(bat_off + 8 * i).unwrap();
        u64::from_le_bytes(raw[a..a + 8].try_into().unwrap())
    };
    let view = ChainView::new(vec![child, parent_disk]);
    for &b in &blocks {
        let e = entry(b + b / 2048);
        let sb = entry((b / 2048) * 2049 + 2048) & !0xFFFFF;
        let mut got = vec![0u8; 2 << 20];
        view.read_exact_at(&mut got, b << 21).unwrap();
        let parent_byte = u8::try_from(b % 251).unwrap() + 1;
        for s in 0..4096u64 {
            let present = if e & 7 == 7 {
                let bit = (b % 2048) * 4096 + s;
                let byte = raw[usize::try_from(sb + bit / 8).unwrap()];
                byte >> (bit % 8) & 1 == 1
            } else {
                false
            };
            let a = usize::try_from(s * 512).unwrap();
            let want: Vec<u8> = if present {
                let f = usize::try_from((e & !0xFFFFF) + s * 512).unwrap();
                raw[f..f + 512].to_vec()
            } else {
                vec![parent_byte; 512]
            };
            assert!(got[a..a + 512] == want[..], "block {b} sector {s}");
        }
    }
}
