//! VHD reader tests: real images from `shared/testdata-real` (SOURCES.md) and images built by the
//! independent test writer in `vhdkit_testkit::vhd`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod real {
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    use vhdkit::FormatInfo;
    use vhdkit::{Disk, DiskType, Extent, PathStyle};
    use vhdkit_testkit::{real_data_dir, sha256_reader, unpack_real};

    fn unpack(rel: &str, dir: &Path) -> Option<PathBuf> {
        let real = real_data_dir(&format!("vhd real image {rel}"))?;
        Some(unpack_real(&real, rel, dir))
    }

    fn vhd_info(d: &Disk) -> vhdkit::vhd::VhdInfo {
        match d.info().details {
            FormatInfo::Vhd(v) => v,
            other => panic!("not vhd: {other:?}"),
        }
    }

    fn check_sha(rel: &str, ty: DiskType, size: u64, id: &str, sha: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let Some(p) = unpack(rel, tmp.path()) else {
            return;
        };
        let d = Disk::open(&p).unwrap();
        assert_eq!(d.disk_type(), ty, "{rel}");
        assert_eq!(d.virtual_size(), size, "{rel}");
        assert_eq!(d.identity().to_string(), id, "{rel}");
        assert!(d.warnings().is_empty(), "{rel}: {:?}", d.warnings());
        let v = vhd_info(&d);
        assert!(v.footer.footer_checksum.ok);
        assert_eq!(sha256_reader(d.view()), sha, "{rel}");
    }

    #[test]
    fn dissect_fixed() {
        check_sha(
            "dissect.hypervisor/fixed.vhd.gz",
            DiskType::Fixed,
            10485760,
            "b895e418-3894-e744-9a88-9a420be4e5ca",
            "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463",
        );
    }

    #[test]
    fn dissect_dynamic() {
        check_sha(
            "dissect.hypervisor/dynamic.vhd.gz",
            DiskType::Dynamic,
            10485760,
            "4b6a0d04-f946-d74e-836f-d3dc87e1816b",
            "ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784",
        );
    }

    #[test]
    fn node_vhd_fixed() {
        check_sha(
            "node-vhd/fixed.vhd.gz",
            DiskType::Fixed,
            10485760,
            "71a5d438-d9d5-f44b-8d26-726a7e7ef18e",
            "fa0490edf13cf9699ac7ead2b2024f2ec7921f583ff824039bca0529055e409d",
        );
    }

    #[test]
    fn node_vhd_dynamic() {
        check_sha(
            "node-vhd/dynamic.vhd.gz",
            DiskType::Dynamic,
            512 << 20,
            "f72cad7b-cc05-a04c-8db3-da4ce981ce29",
            "c461afded0b54cc1cfb5441e08f4d7f9d699d2eff7d9526d1cf6ad227da26683",
        );
    }

    #[test]
    fn imhex_fixed() {
        check_sha(
            "imhex-patterns/vhd.hexpat.vhd.gz",
            DiskType::Fixed,
            3 << 20,
            "7ed7879a-4fbd-9a41-b16d-9503f2fb35c7",
            "3fbc23df8e7b632ea7948cde80925b326a0869e784040aebbaeac5b69e3d1f7b",
        );
    }

    #[test]
    fn dfvfs_ext2_qemu() {
        check_sha(
            "dfvfs/ext2.vhd.gz",
            DiskType::Dynamic,
            4212736,
            "b61f53ca-a786-4528-90e2-55ba791a1c4c",
            "870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99",
        );
    }

    #[test]
    fn disk2vhd_max_chs() {
        check_sha(
            "qemu-iotests/d2v-zerofilled.vhd.bz2",
            DiskType::Dynamic,
            263454720,
            "e7b829fd-e66d-ba49-ac19-6ebdab26cea3",
            "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143",
        );
    }

    fn huge_empty(rel: &str, id: &str, creator: &str) -> Option<Disk> {
        let tmp = tempfile::tempdir().unwrap();
        let p = unpack(rel, tmp.path())?;
        let d = Disk::open(&p).unwrap();
        assert_eq!(d.disk_type(), DiskType::Dynamic);
        assert_eq!(d.virtual_size(), 136365211648);
        assert_eq!(d.identity().to_string(), id);
        assert_eq!(d.block_size(), Some(2 << 20));
        let v = vhd_info(&d);
        assert_eq!(v.footer.chs_size, 136363130880);
        assert_eq!(v.footer.creator_application, creator);
        assert_eq!(v.dynamic.as_ref().unwrap().max_table_entries, 65024);
        assert_eq!(v.dynamic.as_ref().unwrap().allocated_blocks, 0);
        let mut view = d.view();
        for at in [0u64, 1 << 30, 136365211648 - 4096, 77_777_777_777] {
            let mut b = vec![0xAAu8; 4096];
            view.seek(SeekFrom::Start(at)).unwrap();
            view.read_exact(&mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0), "{rel} at {at}");
        }
        Some(view.into_layers().remove(0))
    }

    #[test]
    fn hyperv2012r2_dynamic() {
        if let Some(d) = huge_empty(
            "qemu-iotests/hyperv2012r2-dynamic.vhd.bz2",
            "6d2d5fc8-eeba-de4c-8cee-de3a12db7c98",
            "win ",
        ) {
            assert!(d.warnings().is_empty(), "{:?}", d.warnings());
        }
    }

    #[test]
    fn virtualpc_dynamic_uses_current_size() {
        if let Some(d) = huge_empty(
            "qemu-iotests/virtualpc-dynamic.vhd.bz2",
            "33ea0013-6191-4d02-b93f-88af84296f85",
            "vpc ",
        ) {
            let v = vhd_info(&d);
            assert!(
                v.footer.size_source.contains("136363130880"),
                "{}",
                v.footer.size_source
            );
            assert!(d.warnings().iter().any(|w| w.contains("Virtual PC")));
        }
    }

    #[test]
    fn fat_differential_locators_and_bitmap() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(p) = unpack("dfvfs/fat-differential.vhd.gz", tmp.path()) else {
            return;
        };
        let d = Disk::open(&p).unwrap();
        assert_eq!(d.disk_type(), DiskType::Differencing);
        assert_eq!(d.virtual_size(), 4194304);
        assert_eq!(
            d.identity().to_string(),
            "f84f1636-cd9e-9041-a69e-dcc2380e416a"
        );
        assert!(d.warnings().is_empty(), "{:?}", d.warnings());
        let l = d.parent_linkage().unwrap();
        assert_eq!(l.id.to_string(), "5fa21a55-f394-aa4d-9958-1951a67d5540");
        assert_eq!(l.timestamp, Some(0));
        assert_eq!(l.alternate_id, None);
        let locs = d.parent_locators();
        let kinds: Vec<&str> = locs.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds, ["W2ru", "W2ku", "parent_name"]);
        assert_eq!(locs[0].path.as_deref(), Some(r".\fat-parent.vhd"));
        assert_eq!(locs[0].style, PathStyle::Relative);
        assert_eq!(locs[0].file_offset, Some(0x3000));
        let abs = r"C:\Projects\dfvfs\test_data\fat-parent.vhd";
        assert_eq!(locs[1].path.as_deref(), Some(abs));
        assert_eq!(locs[1].style, PathStyle::AbsoluteWindows);
        assert_eq!(locs[1].file_offset, Some(0x1000));
        assert_eq!(locs[2].path.as_deref(), Some(abs));
        assert_eq!(locs[2].style, PathStyle::Name);
        let v = vhd_info(&d);
        let dy = v.dynamic.unwrap();
        assert_eq!(dy.table_offset, 0x2000);
        assert_eq!(dy.max_table_entries, 2);
        assert_eq!(dy.allocated_blocks, 1);
        let slots: Vec<_> = dy
            .locators
            .iter()
            .map(|s| {
                (
                    s.index,
                    s.code.as_str(),
                    s.data_space_raw,
                    s.data_space_bytes,
                    s.data_length,
                    s.data_offset,
                )
            })
            .collect();
        assert_eq!(
            slots,
            [
                (0, "W2ku", 4096, Some(4096), 84, 0x1000),
                (1, "W2ru", 65536, Some(65536), 32, 0x3000)
            ]
        );
        // Block 0 bitmap, MSB first.
        let mut present = Vec::new();
        let mut off = 0u64;
        let block = 2u64 << 20;
        while off < block {
            let (e, n) = d.map(off, block - off).unwrap();
            if let Extent::Data { file_offset } = e {
                assert_eq!(file_offset, 159 * 512 + 512 + off);
                present.extend(off / 512..(off + n) / 512);
            } else {
                assert_eq!(e, Extent::Unallocated);
            }
            off += n;
        }
        let mut want: Vec<u64> = vec![134, 143];
        want.extend(152..=159);
        want.extend([184, 185, 188]);
        want.extend(190..=192);
        want.extend([194, 196]);
        assert_eq!(present, want);
        // Block 1 is unallocated.
        assert_eq!(d.map(block, block).unwrap(), (Extent::Unallocated, block));
        // A run that starts inside a sector.
        assert_eq!(
            d.map(134 * 512 + 7, 4096).unwrap(),
            (
                Extent::Data {
                    file_offset: 160 * 512 + 134 * 512 + 7
                },
                505
            )
        );
    }

    #[test]
    fn dfvfs_bad_checksums_are_typed_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(p) = unpack("dfvfs/image.vhd.gz", tmp.path()) else {
            return;
        };
        let e = Disk::open(&p).unwrap_err();
        let s = e.to_string();
        assert!(e.is_corruption(), "{s}");
        assert!(s.contains("vhd footer") && s.contains("checksum"), "{s}");
        assert!(s.contains("0xfffff683") && s.contains("0xffffef25"), "{s}");
        let p = unpack("dfvfs/image-differential.vhd.gz", tmp.path()).unwrap();
        let e = Disk::open(&p).unwrap_err();
        let s = e.to_string();
        assert!(e.is_corruption(), "{s}");
        assert!(s.contains("checksum"), "{s}");
        assert!(s.contains("image-differential.vhd"), "{s}");
    }

    #[test]
    fn libvhdi_fragments_parse() {
        use binrw::BinRead;
        use vhdkit::vhd::format::{checksum, DynamicHeader, Footer};
        let Some(real) = real_data_dir("libvhdi fragments") else {
            return;
        };
        let fb = std::fs::read(real.join("libvhdi-fragments/file_footer.1")).unwrap();
        let f = Footer::read(&mut std::io::Cursor::new(&fb)).unwrap();
        assert_eq!(&f.creator_application, b"vpc ");
        assert_eq!(f.disk_type, 4);
        assert_eq!(f.current_size, 512 << 20);
        assert_eq!(f.checksum, checksum(&fb, 64));
        assert_eq!(
            vhdkit::guid::from_vhd_bytes(f.unique_id).to_string(),
            "40d56d36-9ab8-4fe4-a31a-121fe2bf15eb"
        );
        let hb = std::fs::read(real.join("libvhdi-fragments/dynamic_disk_header.1")).unwrap();
        let h = DynamicHeader::read(&mut std::io::Cursor::new(&hb)).unwrap();
        assert_eq!(h.checksum, checksum(&hb, 36));
        assert_eq!(
            vhdkit::guid::from_vhd_bytes(h.parent_unique_id).to_string(),
            "d49c5c80-350a-4a89-898a-5ad6d10f6578"
        );
        assert_eq!(h.parent_time_stamp, 421660540);
        let name = vhdkit::vhd::dynamic::decode_parent_name(&h.parent_unicode_name);
        assert_eq!(name.name.as_deref(), Some("dynamic.vhd"));
        let got: Vec<_> = h
            .parent_locators
            .iter()
            .enumerate()
            .filter(|(_, l)| l.platform_code != [0; 4])
            .map(|(i, l)| {
                (
                    i,
                    String::from_utf8_lossy(&l.platform_code).into_owned(),
                    l.platform_data_space,
                    l.platform_data_length,
                    l.platform_data_offset,
                    vhdkit::vhd::locator::data_space_bytes(l.platform_data_space),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (4, "W2ku".into(), 512, 42, 0x1200, Some(512)),
                (5, "W2ru".into(), 512, 26, 0x1000, Some(512)),
                (6, "Wi2k".into(), 512, 21, 0xe00, Some(512)),
                (7, "Wi2r".into(), 512, 13, 0xc00, Some(512)),
            ]
        );
    }

    #[test]
    fn node_vhd_structure_fixtures() {
        use binrw::BinRead;
        use vhdkit::vhd::format::{checksum, DynamicHeader, Footer};
        let Some(real) = real_data_dir("node-vhd fragments") else {
            return;
        };
        let fb = std::fs::read(real.join("node-vhd/footer.bin")).unwrap();
        let f = Footer::read(&mut std::io::Cursor::new(&fb)).unwrap();
        assert_eq!(f.checksum, checksum(&fb, 64));
        assert_eq!(f.disk_type, 2);
        let hb = std::fs::read(real.join("node-vhd/header.bin")).unwrap();
        let h = DynamicHeader::read(&mut std::io::Cursor::new(&hb[512..])).unwrap();
        assert_eq!(h.checksum, checksum(&hb[512..1536], 36));
    }
}

mod built {
    use std::io::Read;

    use vhdkit::vhd::footer::FooterCopies;
    use vhdkit::FormatInfo;
    use vhdkit::{
        Chain, ChainOptions, ChainView, Disk, DiskType, Error, Extent, Limits, OpenOptions,
        PathStyle,
    };
    use vhdkit_testkit::through::DamageTally;
    use vhdkit_testkit::vhd::{BuiltVhd, Locator, VhdBuilder};
    use vhdkit_testkit::Rng;

    fn open(b: &BuiltVhd) -> Result<Disk, vhdkit::Error> {
        Disk::from_source(Box::new(b.bytes.clone()), &OpenOptions::default())
    }

    fn info(d: &Disk) -> vhdkit::vhd::VhdInfo {
        match d.info().details {
            FormatInfo::Vhd(v) => v,
            other => panic!("not vhd: {other:?}"),
        }
    }

    fn read_all(v: ChainView) -> Vec<u8> {
        let mut out = Vec::new();
        let mut v = v;
        v.read_to_end(&mut out).unwrap();
        out
    }

    fn corrupt_at(e: &Error) -> (&'static str, u64) {
        let l = e.location().unwrap_or_else(|| panic!("no location in {e}"));
        (l.structure, l.offset)
    }

    #[test]
    fn fixed_and_dynamic_round_trip() {
        let mut rng = Rng::new(7);
        for bs in [512u32, 4096, 64 << 10, 2 << 20] {
            let size = 3 * (1 << 20) + 7 * 512;
            let mut fixed = VhdBuilder::fixed(size);
            let mut dynamic = VhdBuilder::dynamic(size).block_size(bs);
            for _ in 0..20 {
                let s = rng.below(size / 512 - 8);
                let n = 1 + rng.below(8) as usize;
                let mut d = vec![0u8; n * 512];
                rng.fill(&mut d);
                fixed.write(s * 512, &d);
                dynamic.write(s * 512, &d);
            }
            let want = fixed.model();
            let f = open(&fixed.build()).unwrap();
            assert_eq!(f.disk_type(), DiskType::Fixed);
            assert_eq!(f.block_size(), None);
            assert_eq!(info(&f).footer.footer_copies, FooterCopies::SingleFixed);
            assert_eq!(read_all(f.view()), want);
            let d = open(&dynamic.build()).unwrap();
            assert_eq!(d.disk_type(), DiskType::Dynamic);
            assert_eq!(d.block_size(), Some(u64::from(bs)));
            assert_eq!(d.identity().as_bytes(), &dynamic.id());
            assert!(d.parent_linkage().is_none());
            assert!(d.warnings().is_empty(), "{:?}", d.warnings());
            assert_eq!(info(&d).footer.footer_copies, FooterCopies::Agree);
            assert_eq!(read_all(d.view()), want, "block size {bs}");
        }
    }

    /// A chain of `depth` disks (child first) with random sector writes at every level, compared
    /// against a model where each sector comes from the topmost layer that wrote it.
    fn chain_case(depth: usize, bs: u32, seed: u64) {
        let mut rng = Rng::new(seed);
        let size = 2 * u64::from(bs) + 5 * 512 + (1 << 16);
        let sectors = size / 512;
        let mut base = VhdBuilder::dynamic(size).block_size(bs);
        let mut layers: Vec<VhdBuilder> = Vec::new();
        let mut parent_id = base.id();
        let mut expected = vec![0u8; size as usize];
        let fill = |b: &mut VhdBuilder, rng: &mut Rng, writes: u64| {
            for _ in 0..writes {
                let s = rng.below(sectors);
                let n = 1 + rng.below(6.min(sectors - s));
                let mut d = vec![0u8; (n * 512) as usize];
                rng.fill(&mut d);
                b.write(s * 512, &d);
            }
        };
        fill(&mut base, &mut rng, 30);
        for _ in 1..depth {
            let mut c = VhdBuilder::differencing(size, parent_id).block_size(bs);
            fill(&mut c, &mut rng, 25);
            parent_id = c.id();
            layers.push(c);
        }
        // Model: apply base, then each child in order (later = closer to the top).
        for s in base.written() {
            let at = (s * 512) as usize;
            expected[at..at + 512].copy_from_slice(&base.model()[at..at + 512]);
        }
        for c in &layers {
            let m = c.model();
            for s in c.written() {
                let at = (s * 512) as usize;
                expected[at..at + 512].copy_from_slice(&m[at..at + 512]);
            }
        }
        let mut disks: Vec<Disk> = Vec::new();
        for c in layers.iter().rev() {
            let d = open(&c.build()).unwrap();
            assert_eq!(d.disk_type(), DiskType::Differencing);
            disks.push(d);
        }
        disks.push(open(&base.build()).unwrap());
        // Linkage: each child names the next one's identity.
        for w in disks.windows(2) {
            assert_eq!(w[0].parent_linkage().unwrap().id, w[1].identity());
        }
        let view = ChainView::new(disks);
        let got = read_all(view);
        assert!(
            got == expected,
            "depth {depth} bs {bs} seed {seed}: contents differ"
        );
    }

    #[test]
    fn chains_depth_1_to_5() {
        for depth in 1..=5 {
            for (i, bs) in [4096u32, 64 << 10, 2 << 20].into_iter().enumerate() {
                chain_case(depth, bs, depth as u64 * 100 + i as u64);
            }
        }
    }

    /// Bitmap byte 0x52 = sectors 1, 3, 6: the others (including 7, after the last set bit,
    /// which libvhdi gets wrong) come from the parent.
    #[test]
    fn sub_byte_bitmap_0x52() {
        let size = 1 << 20;
        let mut parent = VhdBuilder::dynamic(size).block_size(64 << 10);
        parent.write(0, &vec![0xAA; 64 * 512]);
        let mut child = VhdBuilder::differencing(size, parent.id()).block_size(64 << 10);
        for s in [1u64, 3, 6, 17] {
            child.write(s * 512, &vec![s as u8; 512]);
        }
        let built = child.build();
        assert_eq!(built.bytes[built.blocks[&0]], 0x52);
        let c = open(&built).unwrap();
        // Runs, including starting inside a sector.
        let data0 = (built.blocks[&0] + built.bitmap_bytes) as u64;
        assert_eq!(c.map(0, 1 << 20).unwrap(), (Extent::Unallocated, 512));
        assert_eq!(
            c.map(512 + 100, 1 << 20).unwrap(),
            (
                Extent::Data {
                    file_offset: data0 + 612
                },
                412
            )
        );
        assert_eq!(
            c.map(7 * 512, 1 << 20).unwrap(),
            (Extent::Unallocated, 10 * 512)
        );
        assert_eq!(c.map(7 * 512, 300).unwrap(), (Extent::Unallocated, 300));
        // Absent sectors up to the end of block 0 run on through the unallocated blocks
        // after it, to the end of the disk, or of the range asked about.
        assert_eq!(
            c.map(18 * 512, 1 << 20).unwrap(),
            (Extent::Unallocated, (1 << 20) - 18 * 512)
        );
        assert_eq!(
            c.map(18 * 512, 100 << 10).unwrap(),
            (Extent::Unallocated, 100 << 10)
        );
        // Blocks 1 to 15 are unallocated in the child: one run.
        assert_eq!(
            c.map(64 << 10, 1 << 20).unwrap(),
            (Extent::Unallocated, 15 * (64 << 10))
        );
        assert_eq!(
            c.map((64 << 10) + 5, 64 << 10).unwrap(),
            (Extent::Unallocated, 64 << 10)
        );
        let p = open(&parent.build()).unwrap();
        let got = read_all(ChainView::new(vec![c, p]));
        for s in 0..64u64 {
            let sector = &got[(s * 512) as usize..(s * 512 + 512) as usize];
            let want = if [1, 3, 6, 17].contains(&s) {
                s as u8
            } else {
                0xAA
            };
            assert!(sector.iter().all(|&b| b == want), "sector {s}");
        }
        assert!(got[64 * 512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn tapdisk_lsb_first_bitmaps() {
        let size = 1 << 20;
        let mut parent = VhdBuilder::dynamic(size).block_size(4096);
        parent.write(0, &vec![0xAA; 4096]);
        let mut child = VhdBuilder::differencing(size, parent.id())
            .block_size(4096)
            .creator(b"tap\0", 1)
            .lsb_bitmaps();
        child.write(512, &[1; 512]);
        let c = open(&child.build()).unwrap();
        let p = open(&parent.build()).unwrap();
        let got = read_all(ChainView::new(vec![c, p]));
        assert!(got[..512].iter().all(|&b| b == 0xAA));
        assert!(got[512..1024].iter().all(|&b| b == 1));
        assert!(got[1024..4096].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn chain_open_follows_w2ru_locator() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let mut parent = VhdBuilder::dynamic(size).block_size(4096).timestamp(77);
        parent.write(0, &vec![0x11; 8192]);
        let mut child = VhdBuilder::differencing(size, parent.id())
            .block_size(4096)
            .parent_timestamp(77)
            .parent_name(r"C:\nowhere\base.vhd")
            .locator(Locator::w2ku(r"C:\nowhere\base.vhd").data_space(4096))
            .locator(Locator::w2ru(r".\base.vhd").data_space(1));
        child.write(4096, &[0x22; 512]);
        parent.build().write_to(&dir.path().join("base.vhd"));
        child.build().write_to(&dir.path().join("child.vhd"));
        let chain = Chain::open(dir.path().join("child.vhd"), &ChainOptions::default()).unwrap();
        let got = read_all(chain.into_view());
        assert!(got[..4096].iter().all(|&b| b == 0x11));
        assert!(got[4096..4608].iter().all(|&b| b == 0x22));
        assert!(got[4608..8192].iter().all(|&b| b == 0x11));
        assert!(got[8192..].iter().all(|&b| b == 0));
    }

    #[test]
    fn locator_order_styles_and_data_space() {
        let child = VhdBuilder::differencing(1 << 20, [9; 16])
            .block_size(4096)
            .parent_name("p.vhd")
            .locator(Locator::macx("file://localhost/x/p.vhd"))
            .locator(Locator::wi2k(r"C:\x\p.vhd").data_space(1))
            .locator(Locator::wi2r(r".\p.vhd"))
            .locator(Locator::w2ku(r"C:\x\p.vhd").data_space(4096))
            .locator(Locator::w2ru(r".\p.vhd").data_space(1024))
            .locator(Locator::raw(b"Mac ", vec![1, 2, 3]));
        let d = open(&child.build()).unwrap();
        assert!(d.warnings().is_empty(), "{:?}", d.warnings());
        let l = d.parent_locators();
        let got: Vec<(&str, Option<&str>, PathStyle)> = l
            .iter()
            .map(|l| (l.kind.as_str(), l.path.as_deref(), l.style))
            .collect();
        assert_eq!(
            got,
            [
                ("W2ru", Some(r".\p.vhd"), PathStyle::Relative),
                ("W2ku", Some(r"C:\x\p.vhd"), PathStyle::AbsoluteWindows),
                ("Wi2r", Some(r".\p.vhd"), PathStyle::Relative),
                ("Wi2k", Some(r"C:\x\p.vhd"), PathStyle::AbsoluteWindows),
                ("MacX", Some("file://localhost/x/p.vhd"), PathStyle::FileUrl),
                ("Mac", None, PathStyle::Opaque),
                ("parent_name", Some("p.vhd"), PathStyle::Name),
            ]
        );
        let v = info(&d);
        let slots = &v.dynamic.unwrap().locators;
        let wi2k = slots.iter().find(|s| s.code == "Wi2k").unwrap();
        assert_eq!((wi2k.data_space_raw, wi2k.data_space_bytes), (1, Some(512)));
        let w2ku = slots.iter().find(|s| s.code == "W2ku").unwrap();
        assert_eq!(w2ku.data_space_bytes, Some(4096));
    }

    #[test]
    fn locator_problems_are_recorded_not_fatal() {
        let mut b = VhdBuilder::differencing(1 << 20, [9; 16])
            .block_size(4096)
            .parent_name("p.vhd")
            .locator(Locator::w2ru(r".\p.vhd"))
            .locator(Locator::w2ku(r"C:\p.vhd"))
            .locator(Locator::raw(b"W2ku", vec![0x41, 0, 0x00, 0xD8, 0x42, 0]).slot(5))
            .locator(Locator::w2ru("x").data_space(1000));
        b.write(0, &[5; 512]);
        let mut f = b.build();
        // Slot 1 (W2ku): data offset past EOF.
        let e1 = f.locator_entry(1);
        let len = f.bytes.len() as u64;
        f.set_u64(e1 + 16, len - 10);
        f.fix_header_checksum();
        let d = open(&f).unwrap();
        let v = info(&d);
        let slots = v.dynamic.unwrap().locators;
        let s1 = slots.iter().find(|s| s.index == 1).unwrap();
        assert!(s1.path.is_none());
        assert!(
            s1.error.as_ref().unwrap().contains("outside the file"),
            "{s1:?}"
        );
        let s5 = slots.iter().find(|s| s.index == 5).unwrap();
        assert!(
            s5.error.as_ref().unwrap().contains("unpaired surrogate"),
            "{s5:?}"
        );
        let s2 = slots.iter().find(|s| s.index == 2).unwrap();
        assert!(
            s2.error.as_ref().unwrap().contains("data space 1000"),
            "{s2:?}"
        );
        assert_eq!(d.warnings().len(), 3, "{:?}", d.warnings());
        // The good locator still resolves and the data still reads.
        let l = d.parent_locators();
        assert_eq!(l[0].path.as_deref(), Some(r".\p.vhd"));
        assert_eq!(l.last().unwrap().kind, "parent_name");
        assert_eq!(
            d.map(0, 4096).unwrap().0,
            Extent::Data {
                file_offset: (f.blocks[&0] + 512) as u64
            }
        );
        // Data longer than the locator limit.
        let mut lim = Limits::default();
        lim.max_locator_bytes = 4;
        let d =
            Disk::from_source(Box::new(f.bytes.clone()), &OpenOptions::new().limits(lim)).unwrap();
        assert!(d.parent_locators()[0]
            .error
            .as_ref()
            .unwrap()
            .contains("limit"));
    }

    #[test]
    fn invalid_parent_name_is_recorded() {
        let b = VhdBuilder::differencing(1 << 20, [9; 16])
            .block_size(4096)
            .parent_name_raw(vec![0, 0x41, 0xDC, 0x00, 0, 0x42]);
        let d = open(&b.build()).unwrap();
        let l = d.parent_locators();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kind, "parent_name");
        assert!(l[0].path.is_none());
        assert!(l[0].error.as_ref().unwrap().contains("invalid UTF-16"));
        assert_eq!(l[0].file_offset, Some(512 + 64));
        let v = info(&d);
        assert!(v.dynamic.unwrap().parent_unicode_name_error.is_some());
    }

    #[test]
    fn footer_copies() {
        let mut b = VhdBuilder::dynamic(1 << 20).block_size(4096);
        b.write(0, &[3; 512]);
        let good = b.build();
        // End copy damaged (checksum): front copy used, warning.
        let mut f = good.clone();
        f.bytes[f.footer_offset + 100] ^= 1;
        let d = open(&f).unwrap();
        assert_eq!(info(&d).footer.footer_copies, FooterCopies::EndDamaged);
        assert_eq!(info(&d).footer.footer_offset, 0);
        let w = d.warnings();
        assert!(
            w[0].starts_with("footer copy at end of file is damaged (bad checksum"),
            "{w:?}"
        );
        assert!(w[0].ends_with("using the copy at offset 0"), "{w:?}");
        assert_eq!(read_all(d.view())[..512], [3; 512]);
        // End copy damaged (cookie).
        let mut f = good.clone();
        f.bytes[f.footer_offset] = b'X';
        let d = open(&f).unwrap();
        assert_eq!(info(&d).footer.footer_copies, FooterCopies::EndDamaged);
        assert!(d.warnings()[0].contains("bad cookie"));
        // Front copy damaged.
        let mut f = good.clone();
        f.bytes[100] ^= 1;
        let d = open(&f).unwrap();
        assert_eq!(info(&d).footer.footer_copies, FooterCopies::FrontDamaged);
        assert!(d.warnings()[0].contains("offset 0 is damaged"));
        // Both valid, different.
        let mut f = good.clone();
        f.bytes[100] ^= 1;
        f.fix_footer_checksums();
        let d = open(&f).unwrap();
        assert_eq!(info(&d).footer.footer_copies, FooterCopies::Differ);
        assert!(d.warnings()[0].contains("differ"));
        // Both damaged: typed error on the end footer.
        let mut f = good.clone();
        f.bytes[100] ^= 1;
        f.bytes[f.footer_offset + 100] ^= 1;
        let e = open(&f).unwrap_err();
        assert!(e.is_corruption());
        assert_eq!(corrupt_at(&e), ("vhd footer", f.footer_offset as u64 + 64));
        assert!(e.to_string().contains("bad checksum"), "{e}");
    }

    #[test]
    fn fixed_disk_never_trusts_offset_0() {
        // Guest data that looks like a valid dynamic footer + header at offset 0.
        let dynamic = VhdBuilder::dynamic(1 << 20).block_size(4096).build();
        let mut fixed = VhdBuilder::fixed(1 << 20);
        fixed.write(0, &dynamic.bytes[..1536]);
        let mut f = fixed.build();
        let d = open(&f).unwrap();
        assert_eq!(info(&d).footer.footer_copies, FooterCopies::SingleFixed);
        assert_eq!(read_all(d.view()), fixed.model());
        // End footer damaged but still saying "fixed": offset 0 is not believed.
        f.bytes[f.footer_offset + 100] ^= 1;
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e), ("vhd footer", f.footer_offset as u64 + 64));
        // A fixed front "copy" is never used either.
        let mut fixed2 = VhdBuilder::fixed(1 << 20);
        let front = VhdBuilder::fixed(1 << 20).build();
        let mut data = front.bytes[front.footer_offset..].to_vec();
        data.resize(1024, 0);
        fixed2.write(0, &data);
        let mut f2 = fixed2.build();
        f2.bytes[f2.footer_offset] = b'X';
        let e = open(&f2).unwrap_err();
        assert_eq!(corrupt_at(&e).0, "vhd footer");
    }

    #[test]
    fn old_511_byte_footer() {
        let mut b = VhdBuilder::fixed(64 << 10).footer_511();
        b.write(512, &[9; 512]);
        let f = b.build();
        assert_eq!(f.bytes.len(), (64 << 10) + 511);
        let d = open(&f).unwrap();
        assert!(info(&d).footer.footer_511);
        assert_eq!(read_all(d.view()), b.model());
        let mut b = VhdBuilder::dynamic(64 << 10).block_size(4096).footer_511();
        b.write(512, &[9; 512]);
        let d = open(&b.build()).unwrap();
        assert!(info(&d).footer.footer_511);
        assert_eq!(read_all(d.view()), b.model());
    }

    #[test]
    fn reserved_footer_bytes_count_in_checksum() {
        let mut f = VhdBuilder::dynamic(1 << 20).block_size(4096).build();
        // blktap's "hidden" byte 85: accepted when the checksum covers it.
        f.bytes[85] = 1;
        let end = f.footer_offset;
        f.bytes[end + 85] = 1;
        assert!(open(&f).unwrap_err().to_string().contains("bad checksum"));
        f.fix_footer_checksums();
        let d = open(&f).unwrap();
        assert!(d.warnings().is_empty());
    }

    #[test]
    fn bad_footer_fields() {
        let base = VhdBuilder::dynamic(1 << 20).block_size(4096).build();
        let end = base.footer_offset;
        let case = |off: usize, v: u32, want: &str| {
            let mut f = base.clone();
            f.set_u32(end + off, v);
            f.set_u32(off, v);
            f.fix_footer_checksums();
            let e = open(&f).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(corrupt_at(&e), ("vhd footer", (end + off) as u64));
        };
        case(60, 5, "disk type 5");
        case(60, 0, "disk type 0");
        case(12, 0x0002_0000, "file format version");
        // Data offset pointing past the end.
        let mut f = base.clone();
        f.set_u64(end + 16, u64::MAX - 3);
        f.set_u64(16, u64::MAX - 3);
        f.fix_footer_checksums();
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e).0, "vhd dynamic header");
        // Fixed disk larger than its file.
        let mut f = VhdBuilder::fixed(4096).build();
        f.set_u64(f.footer_offset + 48, 8192);
        f.fix_footer_checksums();
        assert!(open(&f).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn truncated_files() {
        let mut b = VhdBuilder::dynamic(1 << 20).block_size(4096);
        b.write(0, &[1; 4096]);
        let full = b.build();
        for cut in [
            0usize,
            1,
            100,
            511,
            512,
            1000,
            1536,
            2000,
            full.bytes.len() - 1,
        ] {
            let bytes = full.bytes[..cut].to_vec();
            let r = Disk::from_source(Box::new(bytes), &OpenOptions::default());
            if cut + 1 == full.bytes.len() {
                // A 511-byte end footer (Virtual PC before 2004) is accepted: same contents.
                let d = r.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                let whole =
                    Disk::from_source(Box::new(full.bytes.clone()), &OpenOptions::default())
                        .unwrap();
                assert_eq!(read_all(d.view()), read_all(whole.view()), "cut {cut}");
            } else {
                // Under 512 bytes there is no footer at all; above, the end footer is cut.
                assert!(r.is_err(), "cut {cut}: a truncated file opened");
            }
        }
    }

    #[test]
    fn bad_dynamic_header() {
        let base = VhdBuilder::dynamic(1 << 20).block_size(4096).build();
        let h = base.header_offset.unwrap();
        // Bad checksum.
        let mut f = base.clone();
        f.bytes[h + 600] ^= 1;
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e), ("vhd dynamic header", (h + 36) as u64));
        assert!(e.to_string().contains("bad checksum"), "{e}");
        // Bad cookie.
        let mut f = base.clone();
        f.bytes[h] = b'X';
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e), ("vhd dynamic header", h as u64));
        assert!(e.to_string().contains("cookie"));
        // Block sizes.
        for bs in [0u32, 256, 3000, 4097, 1 << 31] {
            let mut f = base.clone();
            f.set_u32(h + 32, bs);
            f.fix_header_checksum();
            let e = open(&f).unwrap_err();
            assert_eq!(
                corrupt_at(&e),
                ("vhd dynamic header", (h + 32) as u64),
                "{bs}"
            );
        }
        // Reserved fields are not enforced (checksummed, so only a writer could set them).
        let mut f = base.clone();
        f.bytes[h + 60] = 1;
        f.bytes[h + 1023] = 1;
        f.fix_header_checksum();
        assert!(open(&f).is_ok());
    }

    #[test]
    fn bad_bat() {
        let mut b = VhdBuilder::dynamic(1 << 20).block_size(4096);
        b.write(0, &[1; 4096]);
        b.write(8192, &[2; 4096]);
        let base = b.build();
        let h = base.header_offset.unwrap();
        let bat = base.bat_offset.unwrap() as u64;
        // Too few entries.
        let mut f = base.clone();
        f.set_u32(h + 28, 255);
        f.fix_header_checksum();
        let e = open(&f).unwrap_err();
        assert!(e.to_string().contains("below the 256 blocks"), "{e}");
        // Huge entry count: limit, or corrupt when the limit is raised.
        let mut f = base.clone();
        f.set_u32(h + 28, u32::MAX);
        f.fix_header_checksum();
        assert!(matches!(open(&f).unwrap_err(), Error::LimitExceeded { .. }));
        let mut lim = Limits::default();
        lim.max_bat_bytes = u64::MAX;
        let e = Disk::from_source(Box::new(f.bytes.clone()), &OpenOptions::new().limits(lim))
            .unwrap_err();
        assert_eq!(corrupt_at(&e), ("vhd block allocation table", bat));
        // Entry past EOF / into the footer.
        let mut f = base.clone();
        let last = ((f.footer_offset - 4096) / 512) as u32;
        f.set_bat(2, last);
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e), ("vhd block allocation table", bat + 8));
        assert!(e.to_string().contains("runs past"), "{e}");
        // Overlapping blocks.
        let mut f = base.clone();
        let first = (f.blocks[&0] / 512) as u32;
        f.set_bat(5, first + 1);
        let e = open(&f).unwrap_err();
        assert_eq!(corrupt_at(&e).0, "vhd block allocation table");
        assert!(e.to_string().contains("overlaps"), "{e}");
        // Block over the header.
        let mut f = base.clone();
        f.set_bat(5, 1);
        assert!(open(&f).unwrap_err().to_string().contains("dynamic header"));
    }

    /// Random damage anywhere must give an error or a readable disk, never a panic.
    #[test]
    fn random_damage_never_panics() {
        let mut b = VhdBuilder::differencing(1 << 20, [4; 16])
            .block_size(4096)
            .parent_name("p.vhd")
            .locator(Locator::w2ru(r".\p.vhd"));
        for s in [0u64, 9, 33, 700] {
            b.write(s * 512, &[7; 512]);
        }
        let base = b.build();
        let mut rng = Rng::new(99);
        let mut tally = DamageTally::default();
        for i in 0..1500 {
            let mut f = base.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(f.bytes.len() as u64) as usize;
                f.bytes[at] = rng.next_u64() as u8;
            }
            if i % 2 == 0 {
                f.fix_header_checksum();
                f.fix_footer_checksums();
            }
            tally.record(open(&f), &format!("damage {i}"));
        }
        tally.assert_both_seen();
    }
}
