//! VHD creation and writing: every file is read back by vhdkit, by qemu-img (fixed, dynamic),
//! by libvhdi (differencing chains, only where its VHD bitmap bug cannot show) and compared
//! with an in-memory model; random writes across a 3-deep chain; fault injection at every
//! mutating operation of the write path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Seek, SeekFrom, Write};

use vhdkit::txn::fault::{FaultPlan, FaultyFile};
use vhdkit::vhd::create::{self as vc, NewKind, NewVhd};
use vhdkit::vhd::write::VhdWriter;
use vhdkit::{
    Chain, ChainOptions, ChainView, CreateParams, Disk, DiskType, OpenOptions, WritableDisk,
};
use vhdkit_testkit::through::{apply, disk_of, pattern_writes, qemu_raw, read_chain, tmp};
use vhdkit_testkit::writes::{
    assert_overwrite_refused, assert_reads_model, fail_each_operation, make_chain,
    random_writes_on_top, raw_input, read_image, write_through, FaultBatch,
};
use vhdkit_testkit::{sha256, Rng};

const MIB: u64 = 1 << 20;

fn check_standalone(fixed: bool, size: u64) {
    let d = tmp();
    let p = d.path().join("disk.vhd");
    let params = if fixed {
        CreateParams::fixed(size)
    } else {
        CreateParams::dynamic(size)
    };
    let c = vhdkit::create(&p, &params).unwrap();
    assert_eq!(c.virtual_size, size);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), c.file_size);
    let mut model = vec![0u8; size as usize];
    // Empty disk reads as zeros everywhere.
    assert_eq!(read_chain(&p), model);
    if let Some(q) = qemu_raw("vpc", &p, d.path()) {
        assert_eq!(q, model, "qemu: empty {size}");
    }
    write_through(&p, &mut model, &pattern_writes(size));
    let disk = assert_reads_model(&p, &model, Some("vpc"), d.path());
    if !fixed {
        // Windows layout: file length a multiple of 4 KiB, block data 4 KiB-aligned.
        assert_eq!(std::fs::metadata(&p).unwrap().len() % 4096, 0);
        for off in [0u64, 2 * MIB] {
            if off < size {
                match disk.map(off, 1).unwrap().0 {
                    vhdkit::Extent::Data { file_offset } => assert_eq!(file_offset % 4096, 0),
                    other => panic!("block at {off} not allocated: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn dynamic_sizes_read_back_in_vhdkit_and_qemu() {
    for size in [MIB, 10 * MIB, 64 * MIB + 3 * 512, 5 * MIB - 512] {
        check_standalone(false, size);
    }
}

#[test]
fn fixed_sizes_read_back_in_vhdkit_and_qemu() {
    for size in [MIB, 10 * MIB, 64 * MIB + 3 * 512] {
        check_standalone(true, size);
    }
}

#[test]
fn geometry_agrees_with_the_independent_test_writer() {
    for size in [
        512,
        MIB,
        4 * MIB,
        10 * MIB,
        127 * MIB,
        4 << 30,
        32 << 30,
        127 << 30,
        2040 << 30,
    ] {
        assert_eq!(
            vc::geometry(size),
            vhdkit_testkit::vhd::chs_for(size),
            "{size}"
        );
    }
}

#[test]
fn writes_into_a_file_made_by_the_independent_test_writer() {
    // The testkit writer lays blocks out differently (no 4 KiB alignment, 512-byte BAT padding).
    let mut b = vhdkit_testkit::vhd::VhdBuilder::dynamic(6 * MIB);
    let mut first = vec![0u8; 8192];
    Rng::new(5).fill(&mut first);
    b.write(MIB, &first);
    let d = tmp();
    let p = d.path().join("tk.vhd");
    b.build().write_to(&p);
    let mut model = b.model();
    let writes = pattern_writes(6 * MIB);
    let mut w = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    for (o, data) in &writes {
        w.write_at(*o, data).unwrap();
    }
    w.close().unwrap();
    apply(&mut model, &writes);
    assert_eq!(read_chain(&p), model);
    if let Some(q) = qemu_raw("vpc", &p, d.path()) {
        assert_eq!(sha256(&q), sha256(&model));
    }
}

/// Sector 180 of a dynamic block another writer allocated with only sector 0 marked: writing
/// it sets its bitmap bit (a clear bit means "never written, zeros", and libvhdi reads zeros
/// there), and only its own bit.
#[test]
fn writes_into_a_partly_marked_dynamic_block_set_their_bits() {
    let mut b = vhdkit_testkit::vhd::VhdBuilder::dynamic(4 * MIB);
    b.write(0, &[7u8; 512]);
    let d = tmp();
    let p = d.path().join("tk.vhd");
    let built = b.build();
    built.write_to(&p);
    let bat = built.bat_offset.unwrap();
    let bitmap_of_block_0 = |bytes: &[u8]| {
        let e = u32::from_be_bytes(bytes[bat..bat + 4].try_into().unwrap());
        let at = e as usize * 512;
        bytes[at..at + 512].to_vec()
    };
    let before = bitmap_of_block_0(&std::fs::read(&p).unwrap());
    assert_eq!(before[0], 0x80, "the fixture marks sector 0 only");
    assert_eq!(before[22], 0);
    let mut w = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    w.write_at(180 * 512 + 100, &[9u8; 10]).unwrap();
    w.close().unwrap();
    let after = bitmap_of_block_0(&std::fs::read(&p).unwrap());
    assert_eq!(after[22], 0x80 >> (180 % 8), "sector 180's bit");
    assert_eq!(after[0], 0x80);
    let set: u32 = after.iter().map(|x| x.count_ones()).sum();
    assert_eq!(set, 2, "only sectors 0 and 180 are marked");
    let mut model = b.model();
    apply(&mut model, &[(180 * 512 + 100, vec![9u8; 10])]);
    assert_eq!(read_chain(&p), model);
}

#[test]
fn differencing_layout_matches_windows() {
    let d = tmp();
    let base = d.path().join("base.vhd");
    vhdkit::create(&base, &CreateParams::dynamic(4 * MIB)).unwrap();
    let child = d.path().join("child.vhd");
    let c = vhdkit::create(&child, &CreateParams::differencing(&base)).unwrap();
    assert_eq!(c.disk_type, DiskType::Differencing);
    assert_eq!(c.virtual_size, 4 * MIB);
    let disk = Disk::open(&child).unwrap();
    let info = disk.info();
    let parent = info.parent.as_ref().unwrap();
    assert_eq!(parent.id, Disk::open(&base).unwrap().identity());
    assert_eq!(parent.timestamp, Some(0));
    let abs = std::fs::canonicalize(&base).unwrap();
    let locs: Vec<(String, Option<String>, Option<u64>)> = parent
        .locators
        .iter()
        .map(|l| (l.kind.to_string(), l.path.clone(), l.file_offset))
        .collect();
    assert_eq!(
        locs,
        vec![
            ("W2ru".into(), Some(r".\base.vhd".into()), Some(0x3000)),
            (
                "W2ku".into(),
                Some(abs.to_str().unwrap().into()),
                Some(0x1000)
            ),
            (
                "parent_name".into(),
                Some(abs.to_str().unwrap().into()),
                Some(512 + 64)
            ),
        ]
    );
    let vhdkit::FormatInfo::Vhd(v) = info.details else {
        panic!()
    };
    let dy = v.dynamic.unwrap();
    assert_eq!(dy.table_offset, 0x2000);
    let spaces: Vec<u64> = dy
        .locators
        .iter()
        .map(|l| l.data_space_raw.into())
        .collect();
    assert_eq!(spaces, vec![4096, 65536]);
    assert_eq!(v.footer.creator_application, "win ");
    assert_eq!(v.footer.creator_version_raw, 0x000A_0000);
    assert_eq!(v.footer.creator_host_os, "Wi2k");
    // The same as fat-differential.vhd: first block goes to 0x13e00 (data at 0x14000).
    assert_eq!(std::fs::metadata(&child).unwrap().len(), 0x14000);
    // A parent in another folder gets a `..\` relative locator, and the chain resolves.
    std::fs::create_dir(d.path().join("vm")).unwrap();
    let c2 = d.path().join("vm").join("c2.avhd");
    vhdkit::create(&c2, &CreateParams::differencing(&child)).unwrap();
    let l = Disk::open(&c2).unwrap().parent_locators();
    assert_eq!(l[0].path.as_deref(), Some(r"..\child.vhd"));
    assert_eq!(
        Chain::open(&c2, &ChainOptions::default())
            .unwrap()
            .disks()
            .len(),
        3
    );
}

#[test]
fn create_refuses_bad_requests_and_leaves_no_file() {
    let d = tmp();
    let p = d.path().join("a.vhd");
    std::fs::write(&p, b"keep").unwrap();
    let e = vhdkit::create(&p, &CreateParams::dynamic(MIB)).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"keep");
    let q = d.path().join("b.vhd");
    assert!(vhdkit::create(&q, &CreateParams::dynamic(1000)).is_err());
    assert!(vhdkit::create(&q, &CreateParams::dynamic(MIB).block_size(3000)).is_err());
    assert!(vhdkit::create(&q, &CreateParams::default()).is_err());
    let mut size_mismatch = CreateParams::differencing(&p);
    size_mismatch.size = Some(MIB);
    assert!(vhdkit::create(&q, &size_mismatch).is_err());
    let e = vhdkit::create(&q, &CreateParams::dynamic(MIB).logical_sector_size(4096)).unwrap_err();
    assert!(e.to_string().contains("512"), "{e}");
    assert!(vhdkit::create(d.path().join("c.img"), &CreateParams::dynamic(MIB)).is_err());
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// A chain base (dynamic, with data) -> mid (differencing, with data) -> top (differencing).
fn random_writes_depth_3(size: u64, block: u32, seed: u64, writes: usize) {
    let d = tmp();
    let mut rng = Rng::new(seed);
    let names = ("base.vhd", "mid.avhd", "top.avhd");
    let params = CreateParams::dynamic(size).block_size(block);
    let (paths, model) = make_chain(d.path(), names, &params, block, &mut rng);
    random_writes_on_top(&paths, model, (block, 512), &mut rng, writes);
}

#[test]
fn random_writes_chain_of_3_small_blocks() {
    random_writes_depth_3(4 * MIB + 3 * 512, 32 << 10, 0xC0FFEE, 3000);
}

#[test]
fn random_writes_chain_of_3_default_blocks() {
    random_writes_depth_3(9 * MIB, 2 << 20, 42, 2000);
}

#[test]
fn differencing_chain_matches_libvhdi_on_whole_bitmap_bytes() {
    // libvhdi misreads bitmap bytes whose set bits are not a tail run (ORACLES.md); writes here
    // are 4 KiB-aligned multiples of 4 KiB, so every bitmap byte is 0x00 or 0xFF.
    let d = tmp();
    let base = d.path().join("base.vhd");
    let mid = d.path().join("mid.vhd");
    let top = d.path().join("top.vhd");
    let size = 8 * MIB;
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(77);
    vhdkit::create(&base, &CreateParams::dynamic(size)).unwrap();
    for p in [&base, &mid, &top] {
        if p != &base {
            let parent = if p == &mid { &base } else { &mid };
            vhdkit::create(p, &CreateParams::differencing(parent)).unwrap();
        }
        let mut w = WritableDisk::open(p, &ChainOptions::default()).unwrap();
        for _ in 0..30 {
            let off = rng.below(size / 4096) * 4096;
            let len = ((rng.below(64) + 1) * 4096).min(size - off);
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data);
            w.write_at(off, &data).unwrap();
            apply(&mut model, &[(off, data)]);
        }
        w.close().unwrap();
    }
    assert_eq!(read_chain(&top), model);
    if let Some((h, n)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&[&top, &mid, &base]) {
        assert_eq!(n, size);
        assert_eq!(h, sha256(&model), "libvhdi disagrees");
    }
    if let Some(r) = vhdkit_testkit::oracle::pyvhdi_set_parent(&top, &mid) {
        r.unwrap();
    }
}

#[test]
fn writes_past_the_end_are_refused() {
    let d = tmp();
    let p = d.path().join("d.vhd");
    vhdkit::create(&p, &CreateParams::dynamic(MIB)).unwrap();
    let mut w = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    assert!(w.write_at(MIB - 1, &[1, 2]).is_err());
    w.seek(SeekFrom::Start(MIB)).unwrap();
    assert!(w.write(&[1]).is_err());
    w.seek(SeekFrom::Start(MIB - 1)).unwrap();
    assert_eq!(w.write(&[7, 8, 9]).unwrap(), 1);
    w.close().unwrap();
    assert_eq!(*read_chain(&p).last().unwrap(), 7);
}

#[test]
fn foreign_journal_blocks_writing() {
    let d = tmp();
    let p = d.path().join("d.vhd");
    vhdkit::create(&p, &CreateParams::dynamic(MIB)).unwrap();
    let j = vhdkit::txn::journal::FileJournal::for_disk(&p);
    std::fs::write(j.path(), b"not a journal").unwrap();
    let e = WritableDisk::open(&p, &ChainOptions::default()).unwrap_err();
    assert!(e.to_string().contains("journal"), "{e}");
}

// ---- fault injection ----

fn new_image(kind: NewKind, size: u64, block: u32) -> Vec<u8> {
    let f = FaultyFile::new(Vec::new(), FaultPlan::new(None));
    vc::write_new(
        &f,
        &NewVhd {
            kind,
            virtual_size: size,
            block_size: block,
            unique_id: [9; 16],
            time_stamp: 1,
        },
    )
    .unwrap();
    f.contents_all_written()
}

fn writable(file: FaultyFile, parent: Option<&[u8]>) -> Result<WritableDisk, vhdkit::Error> {
    let w = VhdWriter::open(file, &OpenOptions::default())?;
    let pv = match parent {
        Some(p) => Some(ChainView::new(vec![disk_of(p.to_vec())?])),
        None => None,
    };
    Ok(WritableDisk::from_parts(Box::new(w), pv))
}

fn run_batch(
    file: FaultyFile,
    parent: Option<&[u8]>,
    batch: &[(u64, Vec<u8>)],
) -> Result<(), vhdkit::Error> {
    let mut w = writable(file, parent)?;
    for (o, d) in batch {
        w.write_at(*o, d)?;
    }
    let r = w.flush();
    std::mem::forget(w); // no second flush from Drop: the "process" died here
    r
}

fn fault_injection(diff: bool) {
    let size = 3 * MIB;
    let block = 64 << 10;
    let mut rng = Rng::new(if diff { 11 } else { 12 });
    // Parent (for the differencing case): a dynamic disk full of non-zero data.
    let parent = if diff {
        let bytes = new_image(NewKind::Dynamic, size, block);
        let f = FaultyFile::new(bytes, FaultPlan::new(None));
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data);
        let mut w = writable(f.clone(), None).unwrap();
        w.write_at(0, &data).unwrap();
        w.close().unwrap();
        Some(f.contents_all_written())
    } else {
        None
    };
    let parent = parent.as_deref();
    let kind = if diff {
        let p = disk_of(parent.unwrap().to_vec()).unwrap();
        NewKind::Differencing(vc::NewParent {
            unique_id: *p.identity().as_bytes(),
            time_stamp: 0,
            unicode_name: "p.vhd".into(),
            absolute_path: "/x/p.vhd".into(),
            relative_path: Some(r".\p.vhd".into()),
        })
    } else {
        NewKind::Dynamic
    };
    // The "before" state: some blocks already allocated and flushed.
    let f = FaultyFile::new(new_image(kind, size, block), FaultPlan::new(None));
    let pre: Vec<(u64, Vec<u8>)> = (0..6)
        .map(|i| {
            let mut d = vec![0u8; 1500];
            rng.fill(&mut d);
            (i * 200_000 + 100, d)
        })
        .collect();
    run_batch(f.clone(), parent, &pre).unwrap();
    let before = f.contents_all_written();
    // The batch: in-place writes into allocated blocks, partial sectors, new blocks, a write
    // across a block boundary.
    let mut batch = Vec::new();
    for (o, len) in [
        (150u64, 300u64),
        (200_050, 4000),
        (u64::from(block) * 20 + 7, 900),
        (u64::from(block) * 31 - 100, 5000),
        (2 * MIB + 512, 512),
        (size - 10, 10),
    ] {
        let mut d = vec![0u8; len as usize];
        rng.fill(&mut d);
        batch.push((o, d));
    }
    let mut new = read_image(before.clone(), parent).unwrap();
    apply(&mut new, &batch);
    let ops = fail_each_operation(
        &FaultBatch {
            before,
            parent,
            new,
            sector: 512,
            run: &|f| run_batch(f, parent, &batch),
            writable: &|f| writable(f, parent),
        },
        &format!("vhd, differencing={diff}"),
    );
    eprintln!("fault injection (differencing={diff}): {ops} mutating operations, each failed");
}

#[test]
fn fault_at_every_operation_dynamic() {
    fault_injection(false);
}

#[test]
fn fault_at_every_operation_differencing() {
    fault_injection(true);
}

#[test]
fn convert_raw_to_vhd_and_back() {
    let d = tmp();
    let (raw, padded) = raw_input(d.path(), 7 * MIB + 1000, 5 * MIB);
    for fixed in [false, true] {
        let out = d.path().join(format!("out-{fixed}.vhd"));
        let src = vhdkit::convert::RawSource::open(&raw).unwrap();
        let opts = vhdkit::convert::ConvertOptions::default().fixed(fixed);
        vhdkit::convert::to_path(&src, &out, vhdkit::convert::Target::Vhd, &opts, ()).unwrap();
        assert_eq!(read_chain(&out), padded, "fixed={fixed}");
        if let Some(q) = qemu_raw("vpc", &out, d.path()) {
            assert_eq!(sha256(&q), sha256(&padded), "qemu fixed={fixed}");
        }
        if !fixed {
            // Block 1 (2..4 MiB) is all zeros: not allocated; three blocks are.
            let disk = Disk::open(&out).unwrap();
            assert_eq!(disk.map(2 * MIB, 1).unwrap().0, vhdkit::Extent::Unallocated);
            let len = std::fs::metadata(&out).unwrap().len();
            assert!(len > 6 * MIB && len < 6 * MIB + 64 * 1024, "{len}");
        }
        assert_overwrite_refused(
            &out,
            || vhdkit::convert::to_path(&src, &out, vhdkit::convert::Target::Vhd, &opts, ()),
            &format!("fixed={fixed}"),
        );
    }
}

#[test]
fn writes_into_real_windows_disks() {
    let Some(real) = vhdkit_testkit::real_data_dir("writing into Windows-made VHDs") else {
        return;
    };
    for rel in [
        "dissect.hypervisor/dynamic.vhd.gz",
        "dissect.hypervisor/fixed.vhd.gz",
        "node-vhd/dynamic.vhd.gz",
    ] {
        let d = tmp();
        let p = vhdkit_testkit::unpack_real(&real, rel, d.path());
        let mut model = read_chain(&p);
        let size = model.len() as u64;
        write_through(&p, &mut model, &pattern_writes(size));
        assert_reads_model(&p, &model, Some("vpc"), d.path());
    }
}

#[test]
fn writes_into_the_real_windows_differencing_child() {
    // fat-differential.vhd (Windows 10) over a parent made by vhdkit with the identity the child
    // records (ORACLES.md: the real parent is not available).
    let Some(real) = vhdkit_testkit::real_data_dir("writing into a Windows differencing VHD")
    else {
        return;
    };
    let d = tmp();
    let child = vhdkit_testkit::unpack_real(&real, "dfvfs/fat-differential.vhd.gz", d.path());
    let raw_id = *uuid::Uuid::parse_str("5fa21a55-f394-aa4d-9958-1951a67d5540")
        .unwrap()
        .as_bytes();
    let parent = d.path().join("fat-parent.vhd");
    vhdkit::create(
        &parent,
        &CreateParams::fixed(4 * MIB).id(uuid::Uuid::from_bytes_le(raw_id)),
    )
    .unwrap();
    {
        let mut w = WritableDisk::open(&parent, &ChainOptions::default()).unwrap();
        w.write_at(0, &vec![0xCD; 4 * MIB as usize]).unwrap();
        w.close().unwrap();
    }
    let mut model = read_chain(&child);
    let writes = pattern_writes(4 * MIB);
    let mut w = WritableDisk::open(&child, &ChainOptions::default()).unwrap();
    for (o, data) in &writes {
        w.write_at(*o, data).unwrap();
    }
    w.close().unwrap();
    apply(&mut model, &writes);
    assert!(read_chain(&child) == model);
    // The parent was only read.
    assert!(read_chain(&parent).iter().all(|&b| b == 0xCD));
}
