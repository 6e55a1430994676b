//! VHD reader tests: real images from `shared/testdata-real` (SOURCES.md) and images built by the
//! independent test writer in `vhdkit_testkit::vhd`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod real {
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    use vhdkit::disk::FormatInfo;
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
